"""One tag moved upstream, at 1,000 … 100,000 tags: `lock --upgrade NAME`, then `sync`.

Uses bench/huge.py's layouts and workspaces. Each checkout's workspace is locked, synced
and settled once (a no-op sync trusts its record); then per round one tag of a different
repository moves in the shared layouts, and each checkout in turn runs `lock --upgrade` of
that repository and `sync` (timed separately), then counts the files of its tree and host
configs whose inode or mtime changed, and how many of those kept their bytes (should be 0).
Each round ends with a settle (2 s, then a sync) so the next starts from a trusted record.

    python3 bench/moved.py --tags 10000 --runs 3 [--baseline DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from bench.huge import HugeWorkspace, ensure_layouts, move_tag, tag_name  # noqa: E402
from bench.measure import Sample  # noqa: E402

Files = dict[str, tuple[int, int, bytes]]


def files_of(ws: HugeWorkspace) -> Files:
    """Every file of the tree and host configs: (inode, mtime, sha256 of its bytes)."""
    out: Files = {}
    for top in (ws.path / "public", ws.path / "hosts"):
        for path in top.rglob("*"):
            if path.is_file():
                st = path.stat()
                out[str(path)] = (
                    st.st_ino,
                    st.st_mtime_ns,
                    hashlib.sha256(path.read_bytes()).digest(),
                )
    return out


def written(before: Files, after: Files) -> tuple[int, int]:
    """(files written, of which with the bytes they had)."""
    changed = [p for p, v in after.items() if before.get(p, (0, 0, b""))[:2] != v[:2]]
    same = [p for p in changed if p in before and before[p][2] == after[p][2]]
    return len(changed), len(same)


def settle(spaces: dict[str, HugeWorkspace]) -> None:
    time.sleep(2.1)  # the record distrusts stamps within 2 s of it (record.RACY_NS)
    for ws in spaces.values():
        ws.run("sync", "-q")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tags", type=int, default=10000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="a second checkout to compare with")
    p.add_argument("--work", type=Path, default=Path("/tmp/registrish-bench/moved"))  # noqa: S108
    args = p.parse_args(argv)
    checkouts = {"this": _REPO}
    if args.baseline:
        checkouts["baseline"] = args.baseline.resolve()
    layouts = ensure_layouts(args.work, args.tags)
    spaces = {
        n: HugeWorkspace.create(args.work / f"ws-{args.tags}" / n, layouts, c)
        for n, c in checkouts.items()
    }
    for name, ws in spaces.items():
        print(f"{name}: lock and cold sync", flush=True)
        ws.run("lock", "-q")
        ws.run("sync", "-q")
    settle(spaces)
    settle(spaces)  # twice: the first also writes what an older record lacked
    results: dict[str, dict[str, list[Sample]]] = {n: {"lock": [], "sync": []} for n in spaces}
    repos = sorted(d.name for d in layouts.iterdir() if d.is_dir())
    for i in range(args.runs):
        repo = repos[(i + 1) % len(repos)]
        move_tag(layouts / repo, tag_name(7 + i), salt=f"moved{i}-{time.time_ns()}")
        for name, ws in spaces.items():
            before = files_of(ws)
            results[name]["lock"].append(ws.run("lock", "-q", "--upgrade", f"huge/{repo}"))
            results[name]["sync"].append(ws.run("sync", "-q"))
            count, same = written(before, files_of(ws))
            print(
                f"round {i + 1} {name}: lock {results[name]['lock'][-1].seconds:.2f} s, "
                f"sync {results[name]['sync'][-1].seconds:.2f} s "
                f"({results[name]['sync'][-1].max_rss_kib / 1024:.0f} MiB); "
                f"{count} files written, {same} of them with the bytes they had",
                flush=True,
            )
        settle(spaces)
    for step in ("lock", "sync"):
        for name in spaces:
            got = results[name][step]
            secs = [s.seconds for s in got]
            line = f"{args.tags:,} tags, one tag moved, `{step}`, {name}: median {statistics.median(secs):.2f} s"
            line += f" ({min(secs):.2f}–{max(secs):.2f}), peak RSS {max(s.max_rss_kib for s in got) / 1024:.0f} MiB"
            if name != "this":
                ratios = [
                    a.seconds / b.seconds for a, b in zip(results["this"][step], got, strict=True)
                ]
                line += f"; this / {name} per round: " + " ".join(f"{r:.2f}" for r in ratios)
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
