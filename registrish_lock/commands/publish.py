"""`registrish publish s3://BUCKET[/PREFIX]`: upload the tree to S3-compatible storage."""

from __future__ import annotations

import argparse
import contextlib

from ..bucket.client import DEFAULT_JOBS, open_store
from ..bucket.target import parse_s3_url
from ..console import Console
from ..errors import ExitCode
from ..lock.config import load_config
from ..progress import UPLOAD, QuietProgress, make_progress
from ..serving.publish import publish
from ..serving.routes import Policy
from ..tree.storemove import dry_run_layout
from ..tree.treelock import tree_lock
from . import add_jobs_option, add_no_wait_option, require_local_root

NAME = "publish"
HELP = "upload the tree to S3-compatible storage (S3, R2, Scaleway, MinIO, SeaweedFS)"
DESCRIPTION = """\
Upload the tree under [registry].root to s3://BUCKET[/PREFIX] with each object's
Content-Type and Cache-Control from the route table (manifests get their exact media
type; /v2/ is the key `v2/`). Incremental: the bucket is listed once and only missing
or changed objects are uploaded (blobs and manifests by digest: by key and size; tags,
lists and referrers: by content, ETag = MD5). A blob several repositories share is
uploaded once; its other keys are copied inside the bucket (no bytes sent again), from
that upload or from a key the bucket already has. Order: blobs, manifests by digest,
referrers, tags, tag lists, catalog, ping; --delete then removes what the tree no
longer has (tags first). --dry-run prints the plan and exits 1 when changes are pending.

Credentials come from boto3's standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
AWS_PROFILE or --profile with ~/.aws/credentials and ~/.aws/config, instance roles.
Needs the extra: pip install 'registrish[s3]'.

  registrish publish s3://my-registry --region eu-central-1
  registrish publish s3://my-registry --endpoint-url https://ACCOUNT.r2.cloudflarestorage.com
  registrish publish s3://bucket/prefix --dry-run --delete
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="s3://BUCKET[/PREFIX]", help="where to publish")
    parser.add_argument(
        "--endpoint-url", metavar="URL", help="an S3-compatible endpoint (R2, Scaleway, MinIO…)"
    )
    parser.add_argument("--region", metavar="R", help="the bucket's region")
    parser.add_argument("--profile", metavar="P", help="a profile of ~/.aws/config")
    parser.add_argument(
        "--addressing-style",
        choices=("auto", "path", "virtual"),
        help="how API calls name the bucket (default: boto3's choice or the profile's)",
    )
    add_jobs_option(parser, "parallel uploads", default=DEFAULT_JOBS)
    parser.add_argument(
        "--delete",
        action="store_true",
        help="then delete objects under the prefix that the tree does not have",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument(
        "--force",
        action="store_true",
        help="upload every object again (e.g. after changing tag_cache_seconds)",
    )
    add_no_wait_option(parser)


def run(args: argparse.Namespace, console: Console) -> int:
    target = parse_s3_url(args.target)
    config = load_config(args.config)
    require_local_root(config, "publish", "`registrish sync` writes the bucket directly")
    layout = dry_run_layout(config.layout, console) if args.dry_run else config.layout
    store = open_store(
        target,
        endpoint_url=args.endpoint_url,
        region=args.region,
        profile=args.profile,
        addressing_style=args.addressing_style,
        jobs=args.jobs,
    )
    with tree_lock(layout, console, wait=not args.no_wait), contextlib.closing(store):
        result = publish(
            layout=layout,
            target=target,
            store=store,
            policy=Policy(tag_cache_seconds=config.tag_cache_seconds),
            console=console,
            progress=QuietProgress() if args.dry_run else make_progress(console, UPLOAD),
            jobs=args.jobs,
            delete=args.delete,
            force=args.force,
            dry_run=args.dry_run,
        )
    plan, stats = result.plan, result.stats
    document = {
        "target": str(target),
        "dry_run": args.dry_run,
        "plan": plan.to_json(),
        "summary": stats.to_json(),
    }
    if args.dry_run:
        if plan.pending:
            for line in plan.describe(target):
                console.result(line)
        else:
            console.result(f"{target} is up to date ({plan.unchanged} objects).")
        console.emit_json(document)
        return int(ExitCode.PENDING if plan.pending else ExitCode.OK)
    if plan.extra and not args.delete:
        console.info(
            f"{len(plan.extra)} objects under {target} are not in the tree (--delete removes them)"
        )
    console.info(("published: " if plan.pending else "up to date: ") + stats.summary())
    console.emit_json(document)
    return int(ExitCode.OK)
