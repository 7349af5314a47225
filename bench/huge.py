"""The `huge` scenario: what a run costs when nothing changed, at 1,000 … 100,000 tags.

Data is generated offline in a second: N OCI image layouts (`oci:` sources, README
"Offline"), each with 1,000 tags of one single-layer manifest (a unique config and layer
per tag). A tree is locked and synced once (timed: the cold sync), then every no-op
command runs interleaved, `runs` times: `sync`, `lock`, `gc --dry-run`, `check --local`,
`hosts`. Wall time includes interpreter start; peak RSS is `/usr/bin/time`'s.

    python3 bench/huge.py --tags 1000 --tags 10000 --runs 3 [--baseline DIR] [--profile]

`--baseline DIR` runs a second checkout (e.g. `git archive main | tar -x -C DIR`) on its own
tree of the same data, interleaved with this one: before/after medians and ratios come from
one run. `--profile` prints cProfile's top entries of one no-op `sync` per checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
for _p in (_REPO, _REPO / "tests"):  # like bench/run.py: a checkout with its test bed
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench.huge_registry import cold_ratio, cold_sync_vs_skopeo  # noqa: E402
from bench.huge_registry import markdown as registry_markdown  # noqa: E402
from bench.measure import Sample, Stats, fresh_dir, timed  # noqa: E402
from bench.report import Check, Result, Row  # noqa: E402
from bench.workspace import Context  # noqa: E402
from registrish_lock.tree.layout import Layout  # noqa: E402

TAGS_PER_REPO = 1000
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
#: The no-op commands measured, by label (argv after `registrish`).
COMMANDS: dict[str, tuple[str, ...]] = {
    "sync": ("sync", "-q"),
    "lock": ("lock", "-q"),
    "gc --dry-run": ("gc", "--dry-run", "-q"),
    "check --local": ("check", "--local", "-q"),
    "hosts": ("hosts", "-q"),
}


def tag_name(j: int) -> str:
    return f"1.{j // 100}.{j % 100}"


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return f"sha256:{hexdigest}", len(data)


def _image(blobs: Path, layer_text: str, labels: dict[str, str]) -> tuple[str, int]:
    """A single-layer image manifest over its own config and layer: (digest, size)."""
    layer = _blob(blobs, layer_text.encode())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer[0]]},
        "config": {"Labels": labels},
    }
    cfg = _blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cfg[0], "size": cfg[1]},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer[0], "size": layer[1]}],
    }
    return _blob(blobs, json.dumps(manifest).encode())


def write_layout(path: Path, repo: str, tags: int) -> None:
    """One OCI layout: `tags` tags, each a manifest over its own config and layer."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = []
    for j in range(tags):
        tag = tag_name(j)
        digest, size = _image(blobs, f"layer of {repo}:{tag}\n", {"tag": tag})
        index.append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "annotations": {REF_NAME: tag},
            }
        )
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}
    (path / "index.json").write_text(json.dumps(doc))


def move_tag(path: Path, tag: str, salt: str = "moved") -> str:
    """Point `tag` of the OCI layout at `path` at a new manifest (its own new config and
    layer), as an upstream moving a tag does; returns the new manifest's digest."""
    blobs = path / "blobs" / "sha256"
    digest, size = _image(blobs, f"{salt} layer of {tag}\n", {"tag": tag, "moved": salt})
    index = json.loads((path / "index.json").read_text())
    for entry in index["manifests"]:
        if entry["annotations"][REF_NAME] == tag:
            entry["digest"], entry["size"] = digest, size
    (path / "index.json").write_text(json.dumps(index))
    return digest


def ensure_layouts(cache: Path, total_tags: int) -> Path:
    """`cache/layouts-<n>/r000 …`: ceil(n / 1,000) layouts of up to 1,000 tags, made once."""
    top = cache / f"layouts-{total_tags}"
    if (top / "done").exists():
        return top
    fresh_dir(top)
    left, i = total_tags, 0
    while left > 0:
        n = min(left, TAGS_PER_REPO)
        write_layout(top / f"r{i:03d}", f"r{i:03d}", n)
        left, i = left - n, i + 1
    (top / "done").write_text("")
    return top


@dataclass(frozen=True)
class HugeWorkspace:
    """A config mirroring every layout under `layouts`, its lock and tree, run by `checkout`."""

    path: Path
    checkout: Path

    @staticmethod
    def create(path: Path, layouts: Path, checkout: Path) -> HugeWorkspace:
        fresh_dir(path)
        (path / "layouts").symlink_to(layouts)
        text = '[registry]\nroot = "public"\nhosts = ["nginx"]\n\n'
        for repo in sorted(p.name for p in layouts.iterdir() if p.is_dir()):
            count = len(json.loads((layouts / repo / "index.json").read_text())["manifests"])
            tags = [tag_name(j) for j in range(count)]
            text += f'[[image]]\nsource = "oci:layouts/{repo}"\nname = "huge/{repo}"\n'
            text += f"tags = {json.dumps(tags)}\n\n"
        (path / "registrish.toml").write_text(text)
        return HugeWorkspace(path, checkout)

    @property
    def env(self) -> dict[str, str]:
        # Bytecode is cached as in any install (an inherited PYTHONDONTWRITEBYTECODE would
        # add compiling every module to each run's start).
        return {"PYTHONPATH": str(self.checkout), "PYTHONDONTWRITEBYTECODE": ""}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "registrish_lock", *args]

    def run(self, *args: str) -> Sample:
        return timed(self.argv(*args), cwd=self.path, env=self.env)

    def profile(self, top: int) -> str:
        """cProfile's top entries (cumulative) of one no-op sync."""
        with tempfile.NamedTemporaryFile(suffix=".prof") as out:
            argv = [sys.executable, "-m", "cProfile", "-o", out.name, "-m", "registrish_lock"]
            env = {**os.environ, **self.env}
            subprocess.run([*argv, "sync", "-q"], cwd=self.path, env=env, check=True)
            code = (
                "import pstats,sys; s=pstats.Stats(sys.argv[1]); s.sort_stats('cumulative')"
                f".print_stats({top}); s.sort_stats('tottime').print_stats({top})"
            )
            proc = subprocess.run(
                [sys.executable, "-c", code, out.name], capture_output=True, text=True, check=True
            )
        return proc.stdout


def fitted_exponent(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(cost) against log(size): 1.0 is linear."""
    if len(points) < 2:
        return None
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


@dataclass
class Measured:
    """Per checkout and command: the samples of one scale; per checkout the tree's size."""

    cold: dict[str, Sample]
    noop: dict[str, dict[str, list[Sample]]]
    trees: dict[str, tuple[int, int]]


def tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under `root`, each inode once (a hardlinked twin costs no bytes)."""
    seen: set[int] = set()
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                size += st.st_size
    return files, size


def measure_scale(
    work: Path,
    layouts: Path,
    checkouts: dict[str, Path],
    runs: int,
    say: Callable[[str], None] = print,
) -> Measured:
    spaces = {
        name: HugeWorkspace.create(work / name, layouts, checkout)
        for name, checkout in checkouts.items()
    }
    cold: dict[str, Sample] = {}
    for name, ws in spaces.items():
        ws.run("lock", "-q")  # the first lock is an input: untimed
        say(f"  {name}: cold sync")
        cold[name] = ws.run("sync", "-q")
    return measure_noop(spaces, runs, cold, say)


def measure_noop(
    spaces: dict[str, HugeWorkspace],
    runs: int,
    cold: dict[str, Sample],
    say: Callable[[str], None] = print,
) -> Measured:
    """The no-op commands, interleaved, on workspaces that are synced (or were synced by
    another checkout: the untimed warm-up sync brings them to this one's record)."""
    for ws in spaces.values():
        ws.run("sync", "-q")
    # A scheduled sync runs minutes after the last change; the sync record distrusts
    # directories changed within 2 s of it (record.RACY_NS), so settle past that once.
    time.sleep(2.1)
    for ws in spaces.values():
        ws.run("hosts", "-q")
        ws.run("sync", "-q")
    noop: dict[str, dict[str, list[Sample]]] = {n: {c: [] for c in COMMANDS} for n in spaces}
    for i in range(runs):
        say(f"  round {i + 1}/{runs}")
        for label, args in COMMANDS.items():
            for name, ws in spaces.items():
                noop[name][label].append(ws.run(*args))
    trees = {name: tree_size(ws.path / "public") for name, ws in spaces.items()}
    return Measured(cold, noop, trees)


def _secs(samples: list[Sample]) -> Stats:
    return Stats.of([s.seconds for s in samples])


def _rss(samples: list[Sample]) -> float:
    return statistics.median(s.max_rss_kib / 1024 for s in samples)


def markdown(results: dict[int, Measured], checkouts: Sequence[str]) -> str:
    """A growth table: per command and checkout, median seconds and peak RSS per scale,
    the fitted exponent, and (with two checkouts) the ratio of the first to the second."""
    scales = sorted(results)
    head = "| command | checkout | " + " | ".join(f"{n:,} tags" for n in scales)
    head += " | exponent |"
    if len(checkouts) > 1:
        head += f" {checkouts[0]} / {checkouts[1]} at {scales[-1]:,} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    has_cold = all(name in results[n].cold for n in scales for name in checkouts)
    labels = ["cold sync", *COMMANDS] if has_cold else list(COMMANDS)
    for label in labels:
        for name in checkouts:
            cells, points = [], []
            for n in scales:
                m = results[n]
                samples = [m.cold[name]] if label == "cold sync" else m.noop[name][label]
                s = _secs(samples)
                cells.append(f"{s.median:.2f} s, {_rss(samples):.0f} MiB")
                points.append((float(n), s.median))
            exp = fitted_exponent(points)
            row = f"| `{label}` | {name} | " + " | ".join(cells)
            row += f" | {exp:.2f} |" if exp is not None else " | – |"
            if len(checkouts) > 1 and name == checkouts[0]:
                m = results[scales[-1]]
                a, b = (
                    (_secs([m.cold[c]]) if label == "cold sync" else _secs(m.noop[c][label]))
                    for c in checkouts[:2]
                )
                row += f" {a.median / b.median:.3f}× |"
            elif len(checkouts) > 1:
                row += " |"
            lines.append(row)
    for name in checkouts:
        cells = [
            f"{results[n].trees[name][0]:,} files, {results[n].trees[name][1] / 2**20:,.1f} MiB"
            for n in scales
        ]
        lines.append(f"| tree size | {name} | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


# -- the harness's scenario --------------------------------------------------------------------
#: Tags per harness scale: the CI smoke run covers the scenario at a tiny size.
HARNESS_TAGS = {"smoke": (20, 40), "quick": (1000,), "full": (1000, 10000)}
#: Tags `skopeo sync` copies in the harness (one image after the other: a sample at 10,000).
HARNESS_SKOPEO_TAGS = 1000


def huge(ctx: Context) -> Result:
    """bench/run.py's entry: this checkout only, at the sizes of the harness's scale."""
    sizes = HARNESS_TAGS[ctx.scale.name]
    results = {}
    for n in sizes:
        ctx.log(f"  {n:,} tags")
        layouts = ensure_layouts(ctx.work.parent / "huge", n)
        results[n] = measure_scale(
            ctx.work / f"huge-{n}", layouts, {"this": _REPO}, ctx.runs, ctx.log
        )
        shutil.rmtree(ctx.work / f"huge-{n}", ignore_errors=True)
    top = results[sizes[-1]]
    rows = []
    for label in ["cold sync", *COMMANDS]:
        points = []
        for n in sizes:
            m = results[n]
            samples = [m.cold["this"]] if label == "cold sync" else m.noop["this"][label]
            points.append((float(n), _secs(samples).median))
            exp = fitted_exponent(points) if n == sizes[-1] else None
            rows.append(
                Row(
                    f"`{label}`, {n:,} tags"
                    if label == "cold sync"
                    else f"no-op `{label}`, {n:,} tags",
                    _secs(samples),
                    "s",
                    f"growth exponent {exp:.2f}" if exp is not None else "",
                    f"peak RSS {_rss(samples):.0f} MiB",
                )
            )
    sync = _secs(top.noop["this"]["sync"]).median
    peak = max(_rss(s) for s in top.noop["this"].values())
    ctx.log(f"  cold sync from a docker-registry against skopeo, {sizes[-1]:,} tags")
    cold = cold_sync_vs_skopeo(
        ctx.work.parent / "huge",
        ctx.work / "huge-registry",
        ensure_layouts(ctx.work.parent / "huge", sizes[-1]),
        _REPO,
        skopeo_tags=min(HARNESS_SKOPEO_TAGS, sizes[-1]),
        runs=ctx.runs,
        say=ctx.log,
    )
    shutil.rmtree(ctx.work / "huge-registry", ignore_errors=True)
    vs = cold_ratio(cold)
    rows += [
        Row(
            f"cold `sync` of {cold.tags:,} tags from docker-registry",
            _secs(cold.registrish),
            "s",
            f"{vs:.2f}× skopeo",
            f"{cold.tags / _secs(cold.registrish).median:,.0f} tags/s",
        ),
        Row(
            f"`skopeo sync --all --src yaml --dest dir` of {cold.skopeo_tags:,} of them",
            _secs(cold.skopeo),
            "s",
            "1.00× (baseline, per tag)",
            f"{cold.skopeo_tags / _secs(cold.skopeo).median:,.0f} tags/s",
        ),
    ]
    return Result(
        key="huge",
        title=f"Large mirrors: no-op commands at {', '.join(f'{n:,}' for n in sizes)} tags",
        data=f"{len(sizes)} sizes of {TAGS_PER_REPO:,}-tag OCI layouts (one manifest per tag)",
        rows=tuple(rows),
        checks=(
            Check(
                f"no-op `sync` ≤ 0.5 s at {sizes[-1]:,} tags",
                f"{sync:.2f} s",
                sync <= 0.5 or sizes[-1] < 10000,
            ),
            Check("peak RSS ≤ 150 MiB", f"{peak:.0f} MiB", peak <= 150),
            Check(
                "cold `sync` from a loopback docker-registry ≤ 0.3× skopeo's time per tag",
                f"{vs:.2f}×",
                vs <= 0.3,
            ),
        ),
        notes=(
            "Growth exponent: the least-squares slope of log(time) against log(tags) over the "
            "sizes measured (1.0 is linear). `python3 bench/huge.py` measures more sizes and "
            "compares two checkouts.",
            "Cold sync: the same layouts written into a docker-registry's filesystem storage "
            "(as a push leaves it; bench/huge_registry.py), then `registrish sync` of every tag "
            f"and `skopeo sync` of up to {HARNESS_SKOPEO_TAGS:,} of them, interleaved; the "
            "ratio compares time per tag.",
        ),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tags", type=int, action="append", help="total tags (repeatable)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="a second checkout to compare with")
    p.add_argument("--profile", action="store_true", help="cProfile one no-op sync each")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--work", type=Path, default=Path("/tmp/registrish-bench/huge"))  # noqa: S108
    p.add_argument(
        "--existing",
        action="store_true",
        help="no layouts, no cold sync: the no-op commands on the workspaces a previous run "
        "left under --work (ws-<tags>/this), with this checkout",
    )
    p.add_argument(
        "--skopeo",
        type=int,
        metavar="N",
        help="instead: cold sync from a loopback docker-registry against `skopeo sync` of "
        "up to N of the same tags (bench/huge_registry.py)",
    )
    args = p.parse_args(argv)
    if args.skopeo:
        for n in args.tags or [1000]:
            print(f"== {n:,} tags from a docker-registry", flush=True)
            result = cold_sync_vs_skopeo(
                args.work,
                args.work / f"registry-ws-{n}",
                ensure_layouts(args.work, n),
                _REPO,
                skopeo_tags=min(args.skopeo, n),
                runs=args.runs,
            )
            print(registry_markdown(result), flush=True)
        return 0
    checkouts = {"this": _REPO}
    if args.baseline:
        checkouts["baseline"] = args.baseline.resolve()
    results = {}
    for n in args.tags or [1000]:
        print(f"== {n:,} tags", flush=True)
        if args.existing:
            ws = HugeWorkspace(args.work / f"ws-{n}" / "this", _REPO)
            # another checkout's record would vouch for its host configs and browse page:
            # without it the warm-up sync renders this checkout's
            Layout(ws.path / "public").sync_record.unlink(missing_ok=True)
            results[n] = measure_noop({"this": ws}, args.runs, {})
        else:
            layouts = ensure_layouts(args.work, n)
            results[n] = measure_scale(args.work / f"ws-{n}", layouts, checkouts, args.runs)
        if args.profile:
            for name in checkouts:
                ws = HugeWorkspace(args.work / f"ws-{n}" / name, checkouts[name])
                print(f"--- cProfile, no-op sync, {name}, {n:,} tags\n{ws.profile(args.top)}")
        print(markdown(results, list(checkouts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
