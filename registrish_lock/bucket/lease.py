"""One writer per bucket tree: a lease object taken and kept with conditional writes.

The lease is `<tree prefix>.registrish/lease`, a small JSON document naming its holder (the
caller's text, host, pid, a random id) with the time it was written and its time to live
(`ttl`, 60 s by default). The protocol, on any S3 store that honours conditional writes:

- take: `PutObject If-None-Match: *` (creates the key only if absent). When someone holds
  it (412), read it: a lease not rewritten for `ttl` seconds — judged by the store's own
  clock (`Date` minus `Last-Modified`), so skewed clocks between writers do not matter —
  or one whose holder is a dead process of this very machine (same boot id and PID
  namespace) is taken over with `If-Match: <its ETag>`; a live one is waited for (polling
  with backoff, like the local tree lock's `wait`; `timeout` bounds it) or, with
  `wait=False` (`--no-wait`), reported as `LeaseHeldError` (a `BusyError`, exit 5 like the
  busy local tree lock) naming the holder and when its lease runs out;
- keep: a daemon thread rewrites it every `ttl / 3` with `If-Match: <our ETag>`. A 412 means
  someone took it over (we were not heard from for `ttl`): the lease is `lost`, and the
  writer's next `check()` raises `LeaseLostError` so it stops before its next phase;
- release: `DeleteObject If-Match: <our ETag>` (a 412 leaves someone else's lease alone). A
  store that rejects a conditional delete gets an overwrite, `If-Match`, with an expired
  marker instead.

SeaweedFS 4.48 (the test bed's) honours all of it: a conditional `PutObject` or
`DeleteObject` whose condition fails answers 412 `PreconditionFailed` (also `If-Match` on a
missing key), and a conditional delete that holds answers 204. AWS S3 may also answer 409
`ConditionalRequestConflict` to one of two racing conditional writes: treated like a 412.

A store without conditional writes is detected right after taking the lease: the same body
is put again with `If-None-Match: *` and with a wrong `If-Match`, and both must answer 412.
If either is obeyed (or the store rejects the header), two writers could both believe they
hold the lease, so the lease is removed and `UnconditionalStoreError` (exit 3) raised — unless
the caller passes `allow_unconditional=True`: then a warning goes to `on_warn` and the lease is kept
as an advisory one (read before written, never a guarantee: running one writer at a time is
then the user's job). Requests per run: a GET, the PUT, two probe PUTs, a DELETE, and one
PUT every `ttl / 3` seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from ..errors import BusyError, ExitCode, RegistrishError
from ._s3 import botocore_errors, client_error, error_code

#: The lease's name inside the tree's reserved prefix (`<tree prefix>.registrish/`).
LEASE_NAME = "lease"
DEFAULT_TTL = 60.0
_FORMAT = 1
_WRONG_ETAG = '"00000000000000000000000000000000"'
#: Answers of a store that does not implement a conditional header at all.
_UNSUPPORTED = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest"}
#: A condition that did not hold: 412, or AWS's 409 when a concurrent conditional write to
#: the same key won the race (both mean: read it again).
_CONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class LeaseHeldError(BusyError):
    """Another writer holds the bucket's lease (`wait=False`, or `timeout` passed)."""


class LeaseLostError(BusyError):
    """Another writer took the bucket's lease over while we held it."""


class UnconditionalStoreError(RegistrishError):
    """The store ignores or rejects conditional writes, so a lease guarantees nothing."""

    exit_code = ExitCode.UPSTREAM


def _identity(holder: str) -> dict[str, Any]:
    """Who we are, and what tells a dead process of this machine from one elsewhere."""
    boot_id = pidns = ""
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id = f.read().strip()
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    return {
        "holder": holder,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "id": secrets.token_hex(4),
        "boot_id": boot_id,
        "pidns": pidns,
    }


def _describe(doc: dict[str, Any]) -> str:
    who = doc.get("holder") or f"pid {doc.get('pid', '?')} on host {doc.get('host', '?')}"
    return f"'{who}' (lease id {doc['id']})" if doc.get("id") else f"'{who}'"


@dataclass(frozen=True)
class LeaseRecord:
    """A lease object as read from the store."""

    doc: dict[str, Any]
    etag: str
    #: seconds until it expires, by the store's clock (≤ 0: expired)
    remaining: float

    @property
    def holder(self) -> str:
        return _describe(self.doc)

    @property
    def expired(self) -> bool:
        return self.remaining <= 0 or bool(self.doc.get("released"))

    def dead_here(self, me: dict[str, Any]) -> bool:
        """Its holder is a process of this machine and PID namespace that no longer runs."""
        doc = self.doc
        if not me["boot_id"] or doc.get("boot_id") != me["boot_id"]:
            return False
        if doc.get("pidns") != me["pidns"] or not isinstance(doc.get("pid"), int):
            return False
        try:
            os.kill(doc["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:  # EPERM: alive, someone else's
            return False
        return False

    def until(self) -> str:
        at = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + max(self.remaining, 0)))
        return f"{at}, in {max(self.remaining, 0):.0f} s"


class BucketLease:
    """The lease on one bucket tree, as a context manager: `with BucketLease(...) as lease:`
    takes it (waiting, or raising LeaseHeldError), keeps it renewed, and releases it.
    `prefix` is the tree's reserved prefix (e.g. "mirror/.registrish/"); the lease is
    `prefix + "lease"`. `holder` is the human text others see (e.g. "sync pid 123 on host x")."""

    def __init__(
        self,
        client: Any,  # botocore's S3 client (untyped)
        bucket: str,
        prefix: str,
        *,
        holder: str,
        ttl: float = DEFAULT_TTL,
        wait: bool = True,
        timeout: float | None = None,
        on_wait: Callable[[str], None] | None = None,
        on_warn: Callable[[str], None] | None = None,
        allow_unconditional: bool = False,
    ) -> None:
        self.client, self.bucket, self.ttl = client, bucket, ttl
        self.wait, self.timeout = wait, timeout
        self.key = prefix + LEASE_NAME
        self.url = f"s3://{bucket}/{self.key}"
        self._on_wait = on_wait or (lambda _m: None)
        self._on_warn = on_warn or (lambda _m: None)
        self.allow_unconditional = allow_unconditional
        self.conditional = True
        self.me = _identity(holder)
        self.holder = _describe(self.me)
        self._errors = botocore_errors()
        self._etag: str | None = None
        self._renewed_at = 0.0  # monotonic time the last successful write was sent
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BucketLease:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    # -- the writer's view ------------------------------------------------------------------
    @property
    def lost(self) -> bool:
        if self._lost is None and self._etag is not None and self._overdue():
            self._lost = f"it was not renewed for {self.ttl:.0f} s"
        return self._lost is not None

    def check(self) -> None:
        """Raise LeaseLostError if the lease is no longer ours (call between phases)."""
        if self.lost:
            raise LeaseLostError(
                f"{self.url}: lost the bucket's lease: {self._lost}; stopped before writing more",
                hint="another writer may be running; rerun once it has finished",
            )

    # -- taking it ----------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lease (see the module docstring) and start renewing it."""
        wait, timeout = self.wait, self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, announced = 0.2, False
        while True:
            record = self._read()
            if record is None:
                if self._write(if_none_match=True):
                    break
                continue  # someone created it in between: read theirs
            if record.expired or record.dead_here(self.me):
                if self._write(if_match=record.etag):
                    why = "it had expired" if record.expired else "its process is gone"
                    self._on_warn(f"took over the lease of {record.holder} ({why}): {self.url}")
                    break
                continue
            if not wait:
                raise LeaseHeldError(
                    f"{self.url}: the bucket tree is being written by {record.holder} until "
                    f"{record.until()}",
                    hint="wait for it to finish, or rerun without --no-wait to queue",
                )
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise LeaseHeldError(
                    f"{self.url}: still held by {record.holder} after waiting {timeout:.0f} s",
                    hint="rerun once it has finished",
                )
            if not announced:
                self._on_wait(
                    f"waiting for {record.holder} to release {self.url} "
                    f"(its lease runs until {record.until()}) …"
                )
                announced = True
            pause = min(delay, max(record.remaining, 0.05))
            if deadline is not None:
                pause = min(pause, max(deadline - now, 0.0))
            time.sleep(pause)
            delay = min(delay * 2, 5.0)
        try:
            self._probe_conditional()
        except BaseException:
            if self._etag is not None:  # not yet removed: give it back before failing
                with contextlib.suppress(RegistrishError):
                    self._delete(self._etag)
                self._etag = None
            raise
        self._thread = threading.Thread(target=self._renew_loop, name="bucket-lease", daemon=True)
        self._thread.start()

    def _probe_conditional(self) -> None:
        """Put our own body again with conditions that must fail; a store that obeys
        either (or rejects the headers) cannot give one writer a guarantee."""
        obeyed = []
        for condition in ({"IfNoneMatch": "*"}, {"IfMatch": _WRONG_ETAG}):
            if not self.conditional:
                return
            try:
                etag = self._put(self._body(), **condition)
            except UnconditionalStoreError as exc:
                self._without_conditions(str(exc), ours=True)
                return
            if etag is not None:
                obeyed.append(next(iter(condition)))
                self._etag = etag
        if obeyed:
            self._without_conditions(f"it ignored {' and '.join(obeyed)}", ours=True)

    def _without_conditions(self, problem: str, *, ours: bool) -> None:
        """Refuse a store without conditional writes (removing our lease if `ours`), or,
        when allowed, go on with an advisory lease."""
        message = f"{self.url}: the store does not honour conditional writes ({problem})"
        if not self.allow_unconditional:
            if ours:
                with contextlib.suppress(*self._errors):
                    self.client.delete_object(Bucket=self.bucket, Key=self.key)
                self._etag = None
            raise UnconditionalStoreError(
                f"{message}: two writers could both hold the lease",
                hint="use a store with conditional writes (AWS S3, R2, SeaweedFS, MinIO), "
                "or allow unconditional writes and run one writer at a time yourself",
            )
        self._on_warn(f"{message}: the lease is advisory only; run one writer at a time")
        self.conditional = False

    # -- keeping it ---------------------------------------------------------------------------
    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if self.lost:
                return
            try:
                renewed = self._write(if_match=self._etag)
            except RegistrishError:  # a network blip: try again next round (`lost` once overdue)
                continue
            if not renewed:
                try:
                    record = self._read()
                except RegistrishError:
                    continue  # cannot tell now: next round (`lost` once overdue)
                if record is not None and record.etag == self._etag:
                    continue  # a 409 race that left it ours: try again next round
                by = record.holder if record else "nobody (it was deleted)"
                self._lost = f"it is now held by {by}"
                return

    def _overdue(self) -> bool:
        return time.monotonic() - self._renewed_at >= self.ttl

    # -- giving it back -----------------------------------------------------------------------
    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours. Never raises: a lease
        left behind expires by itself."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        etag, self._etag = self._etag, None
        if etag is None or self.lost:
            return
        try:
            self._delete(etag)
        except RegistrishError as exc:
            self._on_warn(f"could not release {self.url} ({exc}); it expires in {self.ttl:.0f} s")

    def _delete(self, etag: str) -> None:
        params: dict[str, Any] = {"IfMatch": etag} if self.conditional else {}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, **params)
        except self._errors as exc:
            code = error_code(exc)
            if code in _CONDITION_FAILED:
                return  # someone else's by now: leave it
            if code not in _UNSUPPORTED:
                raise client_error(exc, f"releasing {self.url}") from None
            # no conditional delete here: expire it in place, still only if it is ours
            self._put(self._body(released=True), IfMatch=etag)

    # -- S3 ------------------------------------------------------------------------------------
    def _body(self, *, released: bool = False) -> bytes:
        now = time.time()
        doc = {
            "format": _FORMAT,
            **self.me,
            # to the millisecond: every renewal is a new body, so a new ETag
            "written": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1000):03d}Z",
            "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + self.ttl)),
            "ttl": 0 if released else self.ttl,
        }
        if released:
            doc["released"] = True
        return json.dumps(doc, sort_keys=True).encode()

    def _write(self, *, if_none_match: bool = False, if_match: str | None = None) -> bool:
        """Write our lease under the condition; False when the store answered 412."""
        condition: dict[str, str] = {}
        if self.conditional:
            if if_none_match:
                condition["IfNoneMatch"] = "*"
            if if_match is not None:
                condition["IfMatch"] = if_match
        sent = time.monotonic()
        try:
            etag = self._put(self._body(), **condition)
        except UnconditionalStoreError as exc:
            self._without_conditions(str(exc), ours=False)
            etag = self._put(self._body())
        if etag is None:
            return False
        self._etag, self._renewed_at = etag, sent
        return True

    def _put(self, body: bytes, **condition: str) -> str | None:
        """PutObject; its ETag, or None for 412. UnconditionalStoreError when the store
        rejects the conditional header itself."""
        try:
            answer = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=body,
                ContentType="application/json",
                CacheControl="no-store",
                **condition,
            )
        except self._errors as exc:
            code = error_code(exc)
            if code in _CONDITION_FAILED:
                return None
            if condition and code in _UNSUPPORTED:
                raise UnconditionalStoreError(
                    f"it answered {code} to {next(iter(condition))}"
                ) from None
            raise client_error(exc, f"writing {self.url}") from None
        return str(answer["ETag"])

    def _read(self) -> LeaseRecord | None:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
            data = answer["Body"].read()
        except self._errors as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise client_error(exc, f"reading {self.url}") from None
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            doc = {"holder": "unknown: the lease object is not registrish's JSON"}
        ttl = doc.get("ttl")
        ttl = float(ttl) if isinstance(ttl, (int, float)) else DEFAULT_TTL
        return LeaseRecord(doc, str(answer["ETag"]), ttl - _age(answer))


def _age(answer: dict[str, Any]) -> float:
    """Seconds since the object was written, by the store's clock when it sent `Date`."""
    modified = float(answer["LastModified"].timestamp())
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    now = time.time()
    if date:
        with contextlib.suppress(TypeError, ValueError):
            now = parsedate_to_datetime(date).timestamp()
    return max(now - modified, 0.0)
