"""The serving scenario: nginx, Caddy and Apache on their generated configs against the same
server's bare static config, `registrish serve` and docker-registry, on loopback and over a
veth pair into a network namespace (bench/netns.py).

A round measures every endpoint once per measure (the manifest's req/s, then each blob
size's MiB/s), endpoints back to back, so a burst of load from elsewhere on this shared
machine hits a generated config and its bare server alike. Ratios are per round (generated
÷ bare of the same round), then the median over rounds.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed.procs import LOOPBACK, Server, free_port
from testbed.statichosts import (
    start_apache,
    start_caddy,
    start_generated,
    start_nginx,
    write_minimal_apache_config,
    write_minimal_caddy_config,
    write_minimal_nginx_config,
)
from testbed.upstream import MANIFEST_ACCEPT, OCI_MANIFEST, request

from .datagen import SERVED_SIZES, Blob, MiB
from .machine import load_average
from .measure import BenchError, Stats, fresh_dir, timed, wrk
from .netns import Veth, veth_pair
from .report import Check, Grid, Result
from .workspace import REGISTRISH_ENV, Context, SyncedTree, registrish_serve

MIB = float(MiB)
STATIC = ("nginx", "caddy", "apache")
#: Generated ≥ this × the same server's bare config; `serve` against bare nginx and docker-registry.
GENERATED_TARGET = 0.9
SERVE_BLOB_TARGET = 0.8
SERVE_MANIFEST_TARGET = 3.0
#: The blob sizes below this are measured and shown, but not held to the `serve` target:
#: a 16 KiB blob is a request-rate measure (see BENCHMARKS.md).
SERVE_BLOB_MIN = 1 * MiB


@dataclass(frozen=True)
class Endpoint:
    label: str  # "nginx, bare", "nginx, generated", "`registrish serve`", "docker-registry"
    url: str


@dataclass(frozen=True)
class Network:
    name: str  # "loopback" or "veth"
    address: str  # where the servers listen
    wrk_prefix: tuple[str, ...]  # how wrk is run to reach it


def _bare(server: str, root: Path, address: str, tmp: Path) -> Server:
    port = free_port()
    fresh_dir(tmp)
    if server == "nginx":
        conf = write_minimal_nginx_config(tmp, root, port, address)
        return start_nginx(conf, port=port, ready_path="/v2/index", host=address)
    if server == "caddy":
        conf = write_minimal_caddy_config(tmp, root, port, address)
        return start_caddy(conf, port=port, ready_path="/v2/index", host=address)
    conf = write_minimal_apache_config(tmp, root, port, address)
    return start_apache(conf, port=port, ready_path="/v2/index", host=address)


def _generated(
    server: str, tree: SyncedTree, address: str, tmp: Path, nginx_extra: str = ""
) -> Server:
    """`registrish hosts` for ``server`` alone, listening on ``address``, then the server on it
    (nginx with 1 worker, as the bare config; ``nginx_extra``: directives added to its
    server block, to measure a setting against the generated config as it is)."""
    ws = tree.ws
    fresh_dir(tmp)
    port = free_port()
    images = ws.config.read_text().split("\n\n", 1)[1]
    config = tmp / "registrish.toml"
    config.write_text(
        f'[registry]\nroot = "{ws.root}"\nhosts = ["{server}"]\nhosts_dir = "{tmp / "hosts"}"\n'
        f'listen = "{address}:{port}"\n\n{images}'
    )
    shutil.copy(ws.path / "registrish.lock", tmp / "registrish.lock")
    argv = [sys.executable, "-m", "registrish_lock", "hosts", "-q", "-c", str(config)]
    timed(argv, env=REGISTRISH_ENV)
    if nginx_extra:
        conf = tmp / "hosts" / "registrish.conf"
        text = conf.read_text()
        if "\n    gzip off;\n" not in text:
            raise BenchError(f"{conf}: no `gzip off;` line to add {nginx_extra!r} after")
        conf.write_text(
            text.replace("\n    gzip off;\n", f"\n    gzip off;\n    {nginx_extra}\n", 1)
        )
    return start_generated(server, tmp / "hosts", tmp, port=port, address=address, nginx_workers=1)


@contextmanager
def _endpoints(
    ctx: Context, tree: SyncedTree, network: Network, tmp: Path
) -> Iterator[list[Endpoint]]:
    """Every server of the comparison listening on the network's address (docker-registry,
    the harness's upstream, on loopback only)."""
    with ExitStack() as stack:
        out: list[Endpoint] = []
        for server in STATIC:
            for generated in (False, True):
                kind = "generated" if generated else "bare"
                where = tmp / f"{server}-{kind}"
                if generated:
                    s = _generated(server, tree, network.address, where)
                else:
                    s = _bare(server, tree.ws.root, network.address, where)
                stack.callback(s.stop)
                assert s.url is not None
                out.append(Endpoint(f"{server}, {kind}", s.url))
        for i, extra in enumerate(ctx.nginx_variants):
            s = _generated("nginx", tree, network.address, tmp / f"nginx-variant-{i}", extra)
            stack.callback(s.stop)
            assert s.url is not None
            out.append(Endpoint(variant_label(extra), s.url))
        serve = stack.enter_context(registrish_serve(tree, tmp / "serve", network.address))
        assert serve.url is not None
        out.append(Endpoint("`registrish serve`", serve.url))
        if network.name == "loopback":
            out.append(Endpoint("docker-registry", ctx.registry.url))
        yield out


def _verify(endpoint: Endpoint, manifest_path: str, digest: str, blobs: list[Blob]) -> None:
    """The exact manifest (with its media type and digest, except from a bare server: that is
    the file-serving ceiling, not a working registry) and each blob's length."""
    m = request(endpoint.url, "GET", manifest_path, headers={"Accept": MANIFEST_ACCEPT})
    typed = not endpoint.label.endswith("bare")
    if m.status != 200 or (
        typed and (m.digest != digest or m.content_type.split(";")[0] != OCI_MANIFEST)
    ):
        raise BenchError(f"{endpoint.label}: {manifest_path}: {m.status} {m.content_type!r}")
    for blob in blobs:
        path = f"/v2/{blob.repo}/blobs/{blob.digest}"
        b = request(endpoint.url, "HEAD", path)
        if b.status != 200 or int(b.headers.get("content-length", -1)) != blob.size:
            raise BenchError(f"{endpoint.label}: {path}: {b.status} {b.headers}")


def variant_label(directives: str) -> str:
    return f"nginx, generated + `{directives}`"


def size_label(size: int) -> str:
    return f"{size / MiB:,.0f} MiB" if size >= MiB else f"{size / 1024:,.0f} KiB"


Samples = dict[str, dict[str, dict[str, list[float]]]]  # network -> endpoint -> measure -> rounds


def _networks(ctx: Context, stack: ExitStack) -> list[Network]:
    out = [Network("loopback", LOOPBACK, ())]
    if "veth" in ctx.networks:
        veth: Veth = stack.enter_context(veth_pair())
        out.append(Network("veth", veth.host_address, tuple(veth.inside([]))))
    if "loopback" not in ctx.networks:
        out.pop(0)
    return out


def serving(ctx: Context) -> Result:
    ds = ctx.dataset("sizes")
    tree = ctx.synced_tree("sizes")
    manifest = next(t for t in ds.tags if t.media_type == OCI_MANIFEST)
    manifest_path = f"/v2/{manifest.repo}/manifests/{manifest.tag}"
    # The set's layers are its largest blobs (its config is a few hundred bytes).
    blobs = sorted(
        sorted(ds.blobs, key=lambda b: b.size)[-len(SERVED_SIZES) :], key=lambda b: b.size
    )
    measures: dict[str, str | None] = {"manifest": None}
    measures.update({size_label(b.size): f"/v2/{b.repo}/blobs/{b.digest}" for b in blobs})
    samples: Samples = {}
    tmp = ctx.work / "serving"
    load: list[str] = []
    with ExitStack() as stack:
        networks = _networks(ctx, stack)
        endpoints: dict[str, list[Endpoint]] = {}
        for net in networks:
            eps = stack.enter_context(_endpoints(ctx, tree, net, tmp / net.name))
            for ep in eps:
                _verify(ep, manifest_path, manifest.digest, blobs)
            endpoints[net.name] = eps
            samples[net.name] = {ep.label: {m: [] for m in measures} for ep in eps}
        for i in range(ctx.runs):
            load.append(load_average())
            ctx.log(f"  round {i + 1}/{ctx.runs} (load {load[-1]})")
            for net in networks:
                for measure, path in measures.items():
                    for ep in endpoints[net.name]:
                        got = wrk(
                            ep.url + (path or manifest_path),
                            duration=ctx.wrk_seconds,
                            headers={"Accept": MANIFEST_ACCEPT} if path is None else None,
                            prefix=net.wrk_prefix,
                        )
                        value = got.requests_per_s if path is None else got.bytes_per_s / MIB
                        samples[net.name][ep.label][measure].append(value)
    return _result(ctx, samples, list(measures), manifest.repo, blobs, load)


def _ratios(a: list[float], b: list[float]) -> Stats:
    return Stats.of([x / y if y else float("inf") for x, y in zip(a, b, strict=True)])


def _cell(s: Stats) -> str:
    return f"{s.median:.2f}× ({s.low:.2f}–{s.high:.2f})"


def _result(
    ctx: Context,
    samples: Samples,
    measures: list[str],
    repo: str,
    blobs: list[Blob],
    load: list[str],
) -> Result:
    header = ("", "manifest req/s", *(f"{m} blob MiB/s" for m in measures[1:]))
    medians: list[tuple[str, ...]] = []
    ratio_rows: list[tuple[str, ...]] = []
    checks: list[Check] = []
    ratios: dict[str, dict[str, float]] = {}
    for net, by_ep in samples.items():
        for label, by_m in by_ep.items():
            cells = [f"{Stats.of(by_m[m]).median:,.0f}" for m in measures]
            medians.append((f"{label} — {net}", *cells))
        big = [m for m, b in zip(measures[1:], blobs, strict=True) if b.size >= SERVE_BLOB_MIN]
        # (title, endpoint, baseline, measures shown, measures held to the target, target)
        pairs = [
            (
                f"{s} generated ÷ bare",
                f"{s}, generated",
                f"{s}, bare",
                measures,
                measures,
                GENERATED_TARGET,
            )
            for s in STATIC
        ]
        pairs.append(
            (
                "`serve` ÷ bare nginx",
                "`registrish serve`",
                "nginx, bare",
                measures[1:],
                big,
                SERVE_BLOB_TARGET,
            )
        )
        for extra in ctx.nginx_variants:  # shown, not held to a target
            label = variant_label(extra)
            pairs.append((f"{label} ÷ bare", label, "nginx, bare", measures, [], 0.0))
        if "docker-registry" in by_ep:
            pairs.append(
                (
                    "`serve` ÷ docker-registry",
                    "`registrish serve`",
                    "docker-registry",
                    measures[:1],
                    measures[:1],
                    SERVE_MANIFEST_TARGET,
                )
            )
        for title, a, b, shown, held_to, target in pairs:
            stats = {m: _ratios(by_ep[a][m], by_ep[b][m]) for m in shown}
            ratios[f"{title} — {net}"] = {m: s.median for m, s in stats.items()}
            ratio_rows.append(
                (f"{title} — {net}", *(_cell(stats[m]) if m in stats else "—" for m in measures))
            )
            held = {m: stats[m].median for m in held_to}
            if not held:
                continue
            worst = min(held, key=held.__getitem__)
            checks.append(
                Check(
                    f"{title} ≥ {target:g}× — {net} ({', '.join(held)})",
                    f"lowest {held[worst]:.2f}× ({worst})",
                    held[worst] >= target,
                )
            )
    sizes = ", ".join(f"{size_label(b.size)} ({b.size:,} B)" for b in blobs)
    return Result(
        key="serving",
        title="Serving: generated configs against their bare servers, `serve`, docker-registry",
        data=(
            f"set `sizes`: manifest `{repo}:1` (OCI manifest, by tag, full Accept header); "
            f"blobs of {sizes}"
        ),
        rows=(),
        grids=(
            Grid("Per-round ratios: median (min–max) over the rounds", header, tuple(ratio_rows)),
            Grid("Medians: req/s (manifest) and MiB/s (blobs)", header, tuple(medians)),
        ),
        checks=tuple(checks),
        notes=(
            f"wrk -t2 -c16 -d{ctx.wrk_seconds:g}s per measurement. A round runs every measure "
            "on every endpoint back to back (loopback first, then veth); a ratio is taken "
            "within a round. Load average (1/5 min) at the start of each round: "
            f"{', '.join(load)}.",
            "Bare configs: the test bed's minimal ones (tests/testbed/statichosts.py): nginx "
            "1 worker and its defaults (sendfile off), Caddy `file_server`, Apache mpm_event "
            "with its defaults (EnableSendfile Off); generated: `registrish hosts` output, "
            "nginx wrapped in an `http {}` with 1 worker. Bare servers send manifests as "
            "files (no registry media type): the ceiling for serving these bytes.",
            "veth: servers listen on the host end of a veth pair; wrk runs in a network "
            "namespace made for the run (bench/netns.py), removed afterwards. "
            "docker-registry (the harness's upstream) is measured on loopback only.",
            f"`serve` is held to its blob target from {size_label(SERVE_BLOB_MIN)}: below "
            "that a blob costs what a request costs, and a Python server's request rate is "
            "a small fraction of nginx's (the manifest column).",
        ),
        extra={"samples": samples, "ratios": ratios},
    )
