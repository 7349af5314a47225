"""The real-component test bed: upstream registry, test images, static hosts, pull clients.

Everything binds 127.0.0.1 on a free port, runs as a process started by the test with its PID
kept, and is stopped by PID at teardown. Fixtures are registered in ``tests/conftest.py``;
modules:

- :mod:`testbed.procs` — ``free_port``, ``Server``, ``ServerGroup``, ``require_binary``, ``run``
- :mod:`testbed.upstream` — ``start_registry`` (CNCF distribution)
- :mod:`testbed.proxy` — ``CountingProxy``: a recording, fault-injecting reverse proxy
- :mod:`testbed.hub` — ``start_hub``: token auth, S3 storage with redirects (like Docker Hub)
- :mod:`testbed.images` — umoci/busybox images, ``seed_upstream``, ``push_random_image``
- :mod:`testbed.statichosts` — nginx, Caddy, Apache, ``python3 -m http.server``
- :mod:`testbed.clients` — skopeo, podman, containerd/ctr, dockerd/docker
- :mod:`testbed.tls` — a private CA (openssl), server certificates, each client's CA trust
"""
