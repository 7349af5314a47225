"""Profile one no-op `registrish sync` into a bucket (the `wide` set, already synced): the
top cProfile entries by cumulative time and the slowest imports (`python3 -X importtime`).

    python3 bench/bucket_profile.py [--quick] [--cache DIR] [--top 20]

cProfile sees the main thread only: the bucket's client, state object and listing are read
on threads of their own while it reads the lock (their time shows as the wait in
`Future.result`); `-X importtime` covers every thread.

Uses the harness's cached data and upstream (`bench/run.py` builds them on first use) and a
SeaweedFS on 127.0.0.1 started and stopped here, as the `bucket` scenario does.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
for _p in (_REPO, _REPO / "tests"):  # like bench/run.py: a checkout with its test bed
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from testbed.s3 import start_seaweedfs  # noqa: E402
from testbed.upstream import start_registry  # noqa: E402

from bench import datagen  # noqa: E402
from bench.bucket import Pair, aws_env  # noqa: E402
from bench.measure import RequestCounter, timed  # noqa: E402
from bench.run import DEFAULT_CACHE  # noqa: E402
from bench.workspace import Context  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the --quick scale (200 tags)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    scale = datagen.SCALES["quick" if args.quick else "full"]
    cache = args.cache / scale.name
    registry = start_registry(datagen.registry_dir(cache))
    tmp = Path(tempfile.mkdtemp(prefix="registrish-bucket-profile-"))
    s3 = None
    try:
        data = datagen.ensure_data(registry, cache, datagen.make_plan(scale), log=print)
        ctx = Context(registry, data, scale, 1, 1.0, tmp, RequestCounter(registry.server.log_path))
        s3 = start_seaweedfs(tmp / "seaweedfs")
        env = aws_env(s3, tmp / "aws")
        wide = Pair(ctx, "wide", s3, env)
        timed(wide.bucket_argv("sync", "-q"), env=env)  # fill it (untimed)
        full_env = {**os.environ, **env}
        prof = tmp / "noop.prof"
        argv = wide.bucket_argv("sync", "-q")
        argv[1:3] = ["-m", "cProfile", "-o", str(prof), "-m", "registrish_lock"]
        subprocess.run(argv, env=full_env, check=True)
        print(f"== cProfile of one no-op bucket sync, {len(wide.ds.tags)} tags (cumulative)")
        pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(args.top)
        argv = wide.bucket_argv("sync", "-q")
        argv[1:1] = ["-X", "importtime"]
        proc = subprocess.run(argv, env=full_env, check=True, capture_output=True, text=True)
        rows = [line.split("|") for line in proc.stderr.splitlines() if "|" in line][1:]
        ranked = sorted(rows, key=lambda r: -int(r[1]))[: args.top]
        print("== slowest imports (cumulative µs | module)")
        for _self_us, cumulative, name in ranked:
            print(f"  {cumulative.strip():>9} | {name.rstrip()}")
    finally:
        if s3 is not None:
            s3.stop()
        registry.server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
