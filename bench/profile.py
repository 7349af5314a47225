"""Profile one cold `registrish sync` of a bench data set under py-spy and print the top
entries (self and total share of samples), the way issue 6's analysis quotes them.

    python3 bench/profile.py --set noshare [--quick] [--top 15]

Uses the harness's cached data and upstream (`bench/run.py` builds them on first use).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
for _p in (_REPO, _REPO / "tests"):  # like bench/run.py: a checkout with its test bed
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from testbed.upstream import start_registry  # noqa: E402

from bench import datagen  # noqa: E402
from bench.measure import timed  # noqa: E402
from bench.run import DEFAULT_CACHE  # noqa: E402
from bench.workspace import REGISTRISH_ENV, Workspace  # noqa: E402

_FRAME = re.compile(r"^(.*) \((?:.*/)?([^/:]*):\d+\)$")


def top_entries(raw: str, top: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(samples, [(frame, self, total)]) from py-spy's `-f raw` (collapsed stacks)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "function (path/file.py:line)" -> "function (file.py)": lines of one function add up
        frames = [_FRAME.sub(r"\1 (\2)", f) for f in stack.split(";")]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    ranked = [(f, n, total[f]) for f, n in own.most_common(top)]
    return samples, ranked


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default="noshare", help="data set (real, noshare, wide, big)")
    p.add_argument("--quick", action="store_true", help="the --quick scale")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    args = p.parse_args()
    scale = datagen.SCALES["quick" if args.quick else "full"]
    cache = DEFAULT_CACHE / scale.name
    registry = start_registry(datagen.registry_dir(cache))
    tmp = Path(tempfile.mkdtemp(prefix="registrish-profile-"))
    try:
        data = datagen.ensure_data(registry, cache, datagen.make_plan(scale), log=print)
        ds = data.sets[args.set]
        ws = Workspace.create(tmp / "ws", registry, ds)
        timed(ws.registrish("lock", "-q"), env=REGISTRISH_ENV)
        out = tmp / "profile.txt"
        argv = ["py-spy", "record", "-r", str(args.rate), "-f", "raw", "-o", str(out), "--"]
        env = {**os.environ, **REGISTRISH_ENV}
        subprocess.run([*argv, *ws.registrish("sync", "-q")], env=env, check=True)
        ws.check_tree()
        samples, ranked = top_entries(out.read_text(), args.top)
        print(f"{samples} samples; frame: self % / total %")
        for frame, own, total in ranked:
            print(f"  {100 * own / samples:5.1f} % {100 * total / samples:5.1f} %  {frame}")
    finally:
        registry.server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
