"""Cold `sync` of the `huge` tags from a loopback docker-registry, against `skopeo sync`.

The registry is filled offline, in seconds, by writing its filesystem storage the way a push
leaves it (distribution's layout: `blobs/sha256/<2>/<hex>/data`, and per repository the
`_layers` and `_manifests` links), blob data hard-linked from the OCI layouts `huge.py`
generates. docker-registry then serves them as pushed images: every byte both tools fetch
is checked against its digest on the way.

Each round syncs into a fresh workspace (the lock copied in: `lock` is an input, untimed)
and `skopeo sync --all --src yaml --dest dir` into a fresh directory, interleaved. skopeo
copies one image after the other; `skopeo_tags` below the total syncs that many tags (the
first of each repository in turn) and its rate is what the ratio compares.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from testbed.upstream import start_registry

from bench.measure import Sample, fresh_dir, timed
from bench.workspace import skopeo_sync_argv

REF_NAME = "org.opencontainers.image.ref.name"


def _link(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "link").write_text(text)


def fill_storage(layouts: Path, storage: Path) -> dict[str, list[str]]:
    """Write distribution's filesystem storage for every layout under `layouts` (as
    `huge/<layout>`); returns repository → tags. Made once (`storage/done`)."""
    done = storage / "done.json"
    if done.exists():
        result: dict[str, list[str]] = json.loads(done.read_text())
        return result
    fresh_dir(storage)
    v2 = storage / "docker" / "registry" / "v2"
    repos: dict[str, list[str]] = {}
    for layout in sorted(p for p in layouts.iterdir() if p.is_dir()):
        name = f"huge/{layout.name}"
        repo = v2 / "repositories" / name
        blobs = layout / "blobs" / "sha256"
        index = json.loads((layout / "index.json").read_text())
        tags = repos.setdefault(name, [])
        for entry in index["manifests"]:
            tag, digest = entry["annotations"][REF_NAME], entry["digest"]
            manifest = json.loads((blobs / digest.removeprefix("sha256:")).read_bytes())
            children = [manifest["config"]["digest"]] + [d["digest"] for d in manifest["layers"]]
            for d in [digest, *children]:
                hexdigest = d.removeprefix("sha256:")
                data = v2 / "blobs" / "sha256" / hexdigest[:2] / hexdigest / "data"
                if not data.exists():
                    data.parent.mkdir(parents=True, exist_ok=True)
                    os.link(blobs / hexdigest, data)
            for d in children:
                _link(repo / "_layers" / "sha256" / d.removeprefix("sha256:"), d)
            hexdigest = digest.removeprefix("sha256:")
            _link(repo / "_manifests" / "revisions" / "sha256" / hexdigest, digest)
            _link(repo / "_manifests" / "tags" / tag / "current", digest)
            _link(repo / "_manifests" / "tags" / tag / "index" / "sha256" / hexdigest, digest)
            tags.append(tag)
    done.write_text(json.dumps(repos))
    return repos


def skopeo_sample(repos: dict[str, list[str]], count: int) -> dict[str, list[str]]:
    """`count` tags taken round-robin over the repositories (all when count ≥ the total)."""
    picked: dict[str, list[str]] = {name: [] for name in repos}
    left = count
    for i in range(max(len(t) for t in repos.values())):
        for name, tags in repos.items():
            if left and i < len(tags):
                picked[name].append(tags[i])
                left -= 1
    return {name: tags for name, tags in picked.items() if tags}


@dataclass(frozen=True)
class ColdSync:
    """Samples of one scale: registrish's cold syncs of `tags`, skopeo's of `skopeo_tags`."""

    tags: int
    skopeo_tags: int
    registrish: list[Sample]
    skopeo: list[Sample]


def cold_sync_vs_skopeo(
    cache: Path,
    work: Path,
    layouts: Path,
    checkout: Path,
    *,
    skopeo_tags: int,
    runs: int,
    say: Callable[[str], None] = print,
) -> ColdSync:
    """Fill (once) and start a docker-registry on 127.0.0.1 with `layouts`, lock once,
    then interleave `runs` cold syncs with `runs` `skopeo sync`s; the registry is stopped
    by PID at the end."""
    reg_dir = cache / f"registry-{layouts.name}"
    repos = fill_storage(layouts, reg_dir / "storage")
    total = sum(len(t) for t in repos.values())
    registry = start_registry(reg_dir)
    try:
        fresh_dir(work)
        base = work / "base"
        base.mkdir()
        text = '[registry]\nroot = "public"\nhosts = ["nginx"]\n\n'
        for name, tags in repos.items():
            text += f'[[image]]\nsource = "{registry.host}/{name}"\nname = "{name}"\n'
            text += f"tags = {json.dumps(tags)}\n\n"
        text += f'[registries."{registry.host}"]\ninsecure = true\n'
        (base / "registrish.toml").write_text(text)
        env = {"PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": ""}
        argv = [sys.executable, "-m", "registrish_lock"]
        say(f"  lock of {total:,} tags from {registry.host} (untimed)")
        timed([*argv, "lock", "-q"], cwd=base, env=env, timeout=3600)
        sample = skopeo_sample(repos, skopeo_tags)
        yaml = work / "skopeo.yaml"  # JSON is YAML
        yaml.write_text(json.dumps({registry.host: {"tls-verify": False, "images": sample}}))
        mine: list[Sample] = []
        theirs: list[Sample] = []
        for i in range(runs):
            ws = work / "ws"
            fresh_dir(ws)
            for f in ("registrish.toml", "registrish.lock"):
                shutil.copyfile(base / f, ws / f)
            say(f"  round {i + 1}/{runs}: registrish sync ({total:,} tags)")
            mine.append(timed([*argv, "sync", "-q"], cwd=ws, env=env, timeout=3600))
            dest = work / "skopeo-dest"
            fresh_dir(dest)
            count = sum(len(t) for t in sample.values())
            say(f"  round {i + 1}/{runs}: skopeo sync ({count:,} tags)")
            theirs.append(timed(skopeo_sync_argv(yaml, dest), timeout=3600))
            shutil.rmtree(dest, ignore_errors=True)
        return ColdSync(total, sum(len(t) for t in sample.values()), mine, theirs)
    finally:
        registry.server.stop()


def cold_ratio(result: ColdSync) -> float:
    """registrish's median time against skopeo's for the same number of tags (skopeo's
    scaled by tags when it synced a sample)."""
    mine = statistics.median(s.seconds for s in result.registrish)
    theirs = statistics.median(s.seconds for s in result.skopeo)
    return mine / (theirs * result.tags / result.skopeo_tags)


def markdown(result: ColdSync) -> str:
    """Medians, tags/s and registrish's time against skopeo's for the same tag count
    (skopeo's time scaled by tags when it synced a sample)."""
    mine = statistics.median(s.seconds for s in result.registrish)
    theirs = statistics.median(s.seconds for s in result.skopeo)
    rss = [
        statistics.median(s.max_rss_kib / 1024 for s in x)
        for x in (result.registrish, result.skopeo)
    ]
    lines = [
        "| tool | tags | wall, median (min–max) | tags/s | peak RSS |",
        "|---|---:|---:|---:|---:|",
        f"| `registrish sync` | {result.tags:,} | {_span(result.registrish)} | "
        f"{result.tags / mine:,.0f} | {rss[0]:.0f} MiB |",
        f"| `skopeo sync` | {result.skopeo_tags:,} | {_span(result.skopeo)} | "
        f"{result.skopeo_tags / theirs:,.0f} | {rss[1]:.0f} MiB |",
        "",
        f"registrish / skopeo for the same {result.tags:,} tags: **{cold_ratio(result):.2f}×**"
        + (
            f" (skopeo's rate over {result.skopeo_tags:,} tags)"
            if result.skopeo_tags < result.tags
            else ""
        ),
    ]
    return "\n".join(lines)


def _span(samples: list[Sample]) -> str:
    values = [s.seconds for s in samples]
    return f"{statistics.median(values):.1f} s ({min(values):.1f}–{max(values):.1f})"
