"""`registrish check`: prove a deployment serves every locked object right."""

from __future__ import annotations

import argparse

from ..console import Console
from ..errors import ExitCode
from ..lock.config import Config, load_config
from ..lock.lockfile import Lock, read_lock
from ..serving.check import Report, check_local, check_url, validate_url
from ..serving.routes import Policy
from ..upstream.protocols import DEFAULT_JOBS

NAME = "check"
HELP = "verify a deployment (URL) or the local tree serves every locked object right"
DESCRIPTION = """\
Walk every locked tag, manifest, referrers document and blob and verify what the host
answers: status (404 is 404, never 403), exact Content-Type, Docker-Content-Digest,
Content-Length, no compression, and the /v2/ ping. Exit 1 on any failure; exit 3 when
the host does not answer at all (refused, unresolvable, TLS or timeout on /v2/) or its
certificate is not trusted or does not match the host. HTTPS is verified against the
system's CAs, or the PEM bundle SSL_CERT_FILE names.

  registrish check https://registry.example.com     after every deployment
  registrish check http://127.0.0.1:5555 --deep     also download and re-hash blobs
  registrish check --local                          verify the tree on disk
Without URL, --local is implied. With a bucket root (`root = "s3://…"`), --local reads
the bucket instead: every locked object present with its size, bytes and Content-Type.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", nargs="?", help="the deployment's root URL (where /v2/ lives)")
    parser.add_argument("--deep", action="store_true", help="download every blob and re-hash it")
    parser.add_argument("--local", action="store_true", help="verify the tree on disk")


def _print(report: Report, console: Console) -> None:
    if report.failures:
        width = min(70, max(len(f.path) for f in report.failures))
        console.result(f"{'PATH':<{width}}  PROBLEM")
        for f in report.failures:
            console.result(f"{f.path:<{width}}  {f.problem}")
    verdict = "ok" if report.ok else f"{len(report.failures)} failure(s)"
    console.result(f"{report.target}: checked {report.checked} objects: {verdict}")


def _check_bucket(config: Config, lock: Lock, console: Console) -> Report:
    from ..bucket.check import check_bucket
    from ..bucket.session import bucket_tree

    with bucket_tree(config, console, jobs=DEFAULT_JOBS, write=False) as (store, _):
        return check_bucket(store, lock, console)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.url:
        validate_url(args.url)  # a usage error before the config is even read
    config = load_config(args.config)
    lock = read_lock(config.lock_path)
    reports = []
    if (args.local or not args.url) and config.bucket is not None:
        reports.append(_check_bucket(config, lock, console))
    elif args.local or not args.url:
        reports.append(check_local(config.layout, lock))
    if args.url:
        policy = Policy(tag_cache_seconds=config.tag_cache_seconds)
        reports.append(check_url(args.url, lock, deep=args.deep, policy=policy))
    for report in reports:
        _print(report, console)
    console.emit_json({"ok": all(r.ok for r in reports), "reports": [r.to_json() for r in reports]})
    return int(ExitCode.OK if all(r.ok for r in reports) else ExitCode.PENDING)
