"""`check`'s look at the browse page: `index.html` and every `browse/<sha256>.json` data
file it names, each data file's bytes hashed against the digest in its name, so a page
whose data file is missing or damaged (its sections would not open) fails the check.

On a bucket root (`check` without URL) the page must be there and list every locked
repository: sync writes it. Through a URL it is checked when the host serves it (a host
or bucket may route nothing to `/index.html`; the registry does not need it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..lock.lockfile import Lock
from ..pool import map_parallel
from .browse_page import named_data_files
from .routes import BROWSE_DATA_DIR, BROWSE_REL

if TYPE_CHECKING:
    import httpx

    from .check import Report

#: `fetch(rel)` → the object's bytes, None when it is missing.
Fetch = Callable[[str], "bytes | None"]
SYNC = "run `registrish sync`"


class _Requester(Protocol):
    def request(self, method: str, path: str) -> httpx.Response | None: ...


def over_http(checker: _Requester) -> Fetch:
    """A `Fetch` through `check URL`'s checker (its failures reported by it); any answer
    but 200 is a missing object (an S3 host answers 403 for a missing key)."""

    def fetch(rel: str) -> bytes | None:
        resp = checker.request("GET", rel)
        return resp.content if resp is not None and resp.status_code == 200 else None

    return fetch


def check_browse(
    report: Report, lock: Lock, fetch: Fetch, *, page_required: bool, jobs: int = 1
) -> None:
    """Fail `report` for a missing page (when `page_required`; then also for a locked
    repository the page does not list) and for each data file it names that is missing
    or whose bytes do not hash to its name. `jobs` data files are read at a time."""
    page = fetch(BROWSE_REL)
    report.checked += 1
    if page is None:
        if page_required:
            report.fail(BROWSE_REL, f"the browse page is missing ({SYNC})")
        return
    named = named_data_files(page)
    if page_required:
        for name in sorted(set(lock.names()) - set(named)):
            report.fail(BROWSE_REL, f"the browse page does not list {name} ({SYNC})")
    rels = sorted(set(named.values()))
    bodies = map_parallel(fetch, rels, jobs)
    report.checked += len(rels)
    prefix = BROWSE_DATA_DIR + "/"
    for rel, body in zip(rels, bodies, strict=True):
        if body is None:
            report.fail(rel, f"a data file the browse page names is missing ({SYNC})")
        elif hashlib.sha256(body).hexdigest() != rel.removeprefix(prefix).removesuffix(".json"):
            report.fail(rel, f"a browse data file whose bytes do not match its name ({SYNC})")
