"""The benchmark harness: ``python3 bench/run.py --help`` (results go to BENCHMARKS.md).

Modules: :mod:`bench.datagen` (data sets, generated offline and cached), :mod:`bench.measure`
(timed runs, peak RSS, wrk, upstream request counts), :mod:`bench.scenarios` (one function
per scenario), :mod:`bench.report` (markdown), :mod:`bench.machine` (what ran where).
"""
