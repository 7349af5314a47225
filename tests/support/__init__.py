"""Shared test builders and test doubles, one module per concern; test modules import
them from here only (never from each other — tests/test_suite_layout.py checks that).

Real components (registries, hosts, clients, proxies, S3) live in ``tests/testbed``.
"""
