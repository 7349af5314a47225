"""The `bucket_link` scenario (issue 14 over a network): the `bucket` scenario's cold
comparison — `sync` straight into a bucket against `sync` to disk then `publish`, the same
set, rounds interleaved — with the upstream and the bucket across a rate-bounded link.

Both servers (a second docker-registry on the data cache's storage, SeaweedFS `weed mini`)
listen on the host end of a veth pair (bench/netns.py); the measured commands run inside the
pair's network namespace, so every byte they download or upload crosses the pair, shaped
with `tc … tbf` to each rate of `ctx.link_rates`, each way. A probe object moved through
the link (curl, each way) and tbf's overlimit counters show that the shaping binds.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from support.buckets import s3_client
from testbed.procs import http_status, run
from testbed.s3 import SeaweedS3, start_seaweedfs
from testbed.upstream import Registry, start_registry

from .bucket import _CPU_LABELS as SIDES
from .bucket import Pair, aws_env, cold_rounds
from .measure import BenchError, Stats, fresh_dir
from .netns import (
    TBF_BURST,
    TBF_LATENCY,
    Counters,
    Shaping,
    Veth,
    parse_rate,
    rate_label,
    shaped,
    veth_pair,
)
from .report import Check, Result, Row
from .workspace import Context

MIB = 1024.0 * 1024.0
#: The probe object's size: ~0.5 s at 1 Gbit/s, so tbf's 256 KiB burst is < 0.5 % of it.
PROBE_BYTES = 64 * 1024 * 1024
#: How far above the nominal rate a probe may go and the shaping still count as binding
#: (the burst; curl's clock starts after the connection is made).
TOLERANCE = 1.05


def _link_registry(ctx: Context, tmp: Path, address: str) -> Registry:
    """A docker-registry on ``address`` serving the harness's upstream storage (only read)."""
    fresh_dir(tmp)
    (tmp / "storage").symlink_to(ctx.registry.root)
    return start_registry(tmp, name="docker-registry-link", address=address)


def _curl(argv: list[str], what: str, prefix: Sequence[str] = ()) -> float:
    """MiB/s curl reports for one transfer (``-w``'s speed); ``prefix`` runs it elsewhere."""
    proc = run([*prefix, "curl", "-sS", "--fail", "-o", os.devnull, *argv], what=what)
    return float(proc.stdout.strip()) / MIB


def _probe(veth: Veth, s3: SeaweedS3, client: Any, payload: Path) -> dict[str, float]:
    """MiB/s of the probe object each way through the link, and unshaped on the host."""
    key = "probe/link"
    url = f"{s3.url}/{s3.bucket}/{key}"
    client.upload_file(str(payload), s3.bucket, key)  # from the host: not through the link
    inside = veth.inside([])
    down = ["-w", "%{speed_download}", url]
    up = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{s3.access_key}:{s3.secret_key}"]
    up += ["-T", str(payload), "-w", "%{speed_upload}", url + "-up"]
    try:
        return {
            "host": _curl(down, "probe download on the host"),
            "down": _curl(down, "probe download through the link", inside),
            "up": _curl(up, "probe upload through the link", inside),
        }
    finally:
        objects = [{"Key": key}, {"Key": key + "-up"}]
        client.delete_objects(Bucket=s3.bucket, Delete={"Objects": objects, "Quiet": True})


def bucket_link(ctx: Context) -> Result:
    work = ctx.work / "link"
    rows: list[Row] = []
    checks: list[Check] = []
    extra: dict[str, object] = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        veth = stack.enter_context(veth_pair())
        registry = _link_registry(ctx, fresh_dir(work) / "upstream", veth.host_address)
        stack.callback(registry.server.stop)
        lctx = replace(ctx, registry=registry, work=work, _trees={})
        payload = work / "probe"
        payload.write_bytes(os.urandom(PROBE_BYTES))
        for rate in ctx.link_rates:
            with _seaweedfs(lctx, veth.host_address) as s3:
                r_rows, r_checks, r_extra = _at_rate(lctx, veth, s3, payload, rate)
            rows += r_rows
            checks += r_checks
            extra[rate] = r_extra
    return Result(
        key="bucket_link",
        title="Sync straight into a bucket over a shaped link (upstream and SeaweedFS across "
        "a veth pair)",
        data=f"set `real`: {ctx.dataset('real').summary()}",
        rows=tuple(rows),
        checks=tuple(checks),
        notes=NOTES,
        extra=extra,
    )


@contextmanager
def _seaweedfs(ctx: Context, address: str) -> Iterator[SeaweedS3]:
    """A fresh SeaweedFS on ``address`` (one per rate: deleted objects' bytes stay in its
    volumes until a vacuum); on failure its log is kept beside the work directory."""
    tmp = fresh_dir(ctx.work / "seaweedfs")
    s3 = start_seaweedfs(tmp, virtual_hosted=False, address=address)
    try:
        yield s3
    except BaseException:
        kept = ctx.work.parent / "bucket_link-failed.log"
        shutil.copyfile(s3.server.log_path, kept)
        ctx.log(f"  SeaweedFS's log kept at {kept}")
        raise
    finally:
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _at_rate(
    ctx: Context, veth: Veth, s3: SeaweedS3, payload: Path, rate: str
) -> tuple[list[Row], list[Check], dict[str, object]]:
    """Shape the pair to ``rate``, probe it, then the cold rounds over it."""
    label = rate_label(rate)
    env = aws_env(s3, ctx.work / "aws")
    client = s3_client(s3)
    real = Pair(ctx, "real", s3, env)  # its locks name the link's upstream
    with shaped(veth, rate) as shaping:
        probe = _probe(veth, s3, client, payload)
        probed = {d: c.overlimits for d, c in shaping.counters().items()}
        ctx.log(
            f"  {label}: probe {probe['down']:.1f} MiB/s down, {probe['up']:.1f} MiB/s up "
            f"({probe['host']:.0f} unshaped); tbf overlimits {probed}"
        )
        traffic = _Traffic(shaping, after_round=lambda: _vacuum(s3))
        rows, checks, extra = cold_rounds(
            ctx,
            real,
            client,
            inside=veth.inside,
            prefix=f"{label}: ",
            where=f" (over a shaped link of {label})",
            done=traffic.done,
        )
    shutil.rmtree(real.ws.path, ignore_errors=True)
    rows = [*_probe_rows(rate, probe, probed), *rows, *traffic.rows(label)]
    checks = [_binds(rate, probe, probed), *checks]
    return rows, checks, {**extra, "probe_mib_s": probe, "link": traffic.runs}


class _Traffic:
    """What each command moved through the link, per direction and run: tbf's counters
    read as each command exits. Nothing else crosses the link meanwhile (the harness's
    checks and clean-ups reach the servers from the host side)."""

    def __init__(self, shaping: Shaping, after_round: Callable[[], None]) -> None:
        self.shaping, self.after_round = shaping, after_round
        self.last = shaping.counters()
        self.runs: dict[str, list[dict[str, Counters]]] = {side: [] for side, _ in SIDES}

    def done(self, side: str) -> None:
        now = self.shaping.counters()
        self.runs[side].append({d: c.minus(self.last[d]) for d, c in now.items()})
        if side == SIDES[-1][0]:  # the round's last command
            self.after_round()
            now = self.shaping.counters()
        self.last = now

    def rows(self, label: str) -> list[Row]:
        out = []
        for side, name in SIDES:
            runs = self.runs[side]
            per_way = {d: Stats.of([r[d].sent / MIB for r in runs]).median for d in runs[0]}
            drops = Stats.of([sum(c.dropped for c in r.values()) for r in runs]).median
            split = ", ".join(f"{d} {mib:,.0f} MiB" for d, mib in per_way.items())
            out.append(
                Row(
                    f"{label}: bytes through the link during {name} (both ways)",
                    Stats.of([sum(c.sent for c in r.values()) / MIB for r in runs]),
                    "MiB",
                    "",
                    f"{split}; tbf drops {drops:.0f} (medians)",
                )
            )
        return out


def _vacuum(s3: SeaweedS3) -> None:
    """Reclaim the bytes of the objects emptied so far (untimed, between rounds): SeaweedFS
    keeps them in its volumes until a vacuum, and 5 rounds write ~13 GiB (the master's own
    vacuum runs every 14 minutes, during a measurement if it runs at all)."""
    flag = next(a for a in s3.server.argv if a.startswith("-master.port="))
    host = s3.url.removeprefix("http://").rsplit(":", 1)[0]
    url = f"http://{host}:{flag.split('=', 1)[1]}/vol/vacuum?garbageThreshold=0.001"
    status = http_status(url, timeout=600)
    if status != 200:
        raise BenchError(f"SeaweedFS vacuum: HTTP {status} from {url}")


def _nominal(rate: str) -> float:
    """The rate in MiB/s (tc's units are decimal bits)."""
    return parse_rate(rate) / 8 / MIB


def _probe_rows(rate: str, probe: dict[str, float], overlimits: dict[str, int]) -> list[Row]:
    label, nominal = rate_label(rate), _nominal(rate)
    held = ", ".join(f"{d} {n}" for d, n in overlimits.items())
    return [
        Row(
            f"{label}: one {PROBE_BYTES / MIB:.0f} MiB object through the link, download (curl)",
            Stats.of([probe["down"]]),
            "MiB/s",
            f"{probe['down'] / nominal:.2f}× the rate ({nominal:.1f} MiB/s)",
            f"the same GET on the host, unshaped: {probe['host']:.0f} MiB/s",
        ),
        Row(
            f"{label}: the same object uploaded through the link (curl PUT)",
            Stats.of([probe["up"]]),
            "MiB/s",
            f"{probe['up'] / nominal:.2f}× the rate",
            f"tbf overlimits after both probes: {held}",
        ),
    ]


def _binds(rate: str, probe: dict[str, float], overlimits: dict[str, int]) -> Check:
    """The shaping binds: the probe's download stays at the rate and tbf held packets back."""
    limit = _nominal(rate) * TOLERANCE
    down = overlimits["host→namespace"]
    return Check(
        f"the link is shaped to {rate_label(rate)}: probe download ≤ {TOLERANCE:.2f}× the "
        "rate, tbf overlimits > 0",
        f"{probe['down']:.1f} MiB/s; {down} overlimits",
        probe["down"] <= limit and down > 0,
    )


NOTES = (
    "Shaped: a veth pair into a network namespace the harness creates and removes "
    "(bench/netns.py). The upstream (a second docker-registry serving the harness's registry "
    "storage) and SeaweedFS `weed mini` (path-style S3, its internal ports on the same "
    "address) listen on the pair's host end; `sync` into the bucket, `sync` to disk and "
    "`publish` run inside the namespace (`ip netns exec`), so each byte they download or "
    "upload crosses the pair. Each end's egress has a token bucket, `tc qdisc replace dev "
    f"DEV root tbf rate R burst {TBF_BURST} latency {TBF_LATENCY}`: R each way, full duplex. "
    "No delay is added (the pair's round trip is tens of µs); the machine's 2 cores are "
    "still shared by the command, both servers and the shaping.",
    "Why these rates: a CI runner's network to a registry and an object store is typically "
    "~1 Gbit/s or less; SeaweedFS here ingests ~100 MiB/s of CPU-bound work (about 0.8 "
    "Gbit/s, see `bucket`), so at 1 Gbit/s the store, not the link, may still bound an "
    "upload; at 500 Mbit/s the link binds both ways.",
    "The shaping binds: a 64 MiB probe object goes through the link each way with curl "
    "(GET anonymously, PUT signed) before the rounds, with the same GET unshaped on the "
    "host for comparison, and tbf's overlimit counters (packets held back for want of "
    "tokens) are read after it.",
    "Rounds as in `bucket`: each starts from an empty prefix (and an empty tree); the three "
    "commands of a round run back to back; every blob of the set is checked in the bucket "
    "with its size after each bucket sync and publish; ratios are of medians, per-round "
    "ratios of the same round. CPU seconds are read from /proc as in `bucket`.",
    "Bytes through the link are tbf's byte counters of both ends, read as each command "
    "exits (the harness's own checks reach the servers from the host side, not through the "
    "link). Each rate has its own SeaweedFS, vacuumed after each round (untimed): it keeps "
    "deleted objects' bytes until then.",
)
