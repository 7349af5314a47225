"""`registrish check` without a URL on a bucket root: what `check --local` proves for a
directory, read from the bucket (its listing and the state object, cross-checked).

Every object the lock reaches must be there: blobs with their size, manifests with their
exact bytes and Content-Type, referrers, tag lists, catalog and ping with the bytes sync
writes; nothing unlocked may be tagged. It is the plan a `sync` would make, reported as
failures (an empty plan is a pass). Then the browse page: there, listing every locked
repository, each data file it names there and hashing to its name (`checkbrowse`). Re-hashing blobs needs `sync --verify`, or
`check URL --deep` through the host that serves the bucket.
"""

from __future__ import annotations

from ..console import Console
from ..lock.lockfile import Lock
from ..serving.check import Report
from ..serving.checkbrowse import check_browse
from ..tree.apply import collect_manifests
from ..tree.desired import desired_tree
from ..tree.plan import make_plan
from ..upstream.protocols import DEFAULT_JOBS
from .store import BucketStore


def check_bucket(store: BucketStore, lock: Lock, console: Console) -> Report:
    report = Report(target=store.label)
    state = store.observe()
    manifests = collect_manifests(lock, state, None, console)
    desired = desired_tree(lock, manifests.parsed, strict=False)
    plan = make_plan(desired, state)
    report.checked = (
        len(desired.store) + len(desired.blobs) + len(desired.manifests) + len(desired.tags)
    ) + len(desired.docs)
    for name in sorted(desired.unknown_repos):
        report.fail(f"v2/{name}/", "a locked manifest is missing (run `registrish sync`)")
    for link in plan.links:  # every key of a blob to fetch is a link too
        report.fail(link.rel, "blob missing or of another size")
    for write in (*plan.manifests, *plan.tags):
        report.fail(write.want.rel, f"manifest missing, different or not typed {write.want.kind}")
    for doc in (*plan.referrers, *plan.tag_lists, plan.catalog, plan.ping):
        if doc is not None:
            report.fail(doc.rel, "missing or not what the lock says")
    for removal in plan.removals:
        report.fail(removal.rel, f"{removal.what} not in the lock (run `registrish sync`)")
    check_browse(report, lock, store.read, page_required=True, jobs=DEFAULT_JOBS)
    return report
