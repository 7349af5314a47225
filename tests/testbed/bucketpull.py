"""A puller of a bucket tree served at the host root, as a registry client reads it: a tag's
manifest, then every manifest and blob it reaches, each checked against its digest. One
pull (`pull`) or a loop on a thread (`PullLoop`) that runs while something writes the tree."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

from registrish_lock.oci import mediatypes

_CHUNK = 1024 * 1024


class MissingContent(AssertionError):
    """A pulled tag reaches a manifest or blob the tree does not serve (or serves wrong)."""


def _get(url: str, digest: str | None = None) -> bytes | None:
    """The body at `url` (None on 404/403: S3's answers for a missing key), checked against
    `digest` when given."""
    accept = ", ".join(sorted(mediatypes.TYPE_OF_KIND.values()))
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            hasher, parts = hashlib.sha256(), []
            while chunk := answer.read(_CHUNK):
                hasher.update(chunk)
                parts.append(chunk)
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 404):
            return None
        raise
    if digest is not None and "sha256:" + hasher.hexdigest() != digest:
        raise MissingContent(f"{url}: the bytes hash to sha256:{hasher.hexdigest()}")
    return b"".join(parts)


def pull(base: str, name: str, ref: str) -> str | None:
    """Pull `name:ref` from the tree at `base` (`http://host[/prefix]`): the manifest's
    digest, None when the tag is not there; `MissingContent` when it reaches anything absent."""
    body = _get(f"{base}/v2/{name}/manifests/{ref}")
    if body is None:
        return None
    _walk(base, name, body)
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _walk(base: str, name: str, body: bytes) -> None:
    doc = json.loads(body)
    for child in doc.get("manifests", []):
        url = f"{base}/v2/{name}/manifests/{child['digest']}"
        got = _get(url, child["digest"])
        if got is None:
            raise MissingContent(f"{url}: missing")
        _walk(base, name, got)
    for blob in [doc["config"], *doc.get("layers", [])] if "config" in doc else []:
        url = f"{base}/v2/{name}/blobs/{blob['digest']}"
        if _get(url, blob["digest"]) is None:
            raise MissingContent(f"{url}: missing")


class PullLoop:
    """Pull `name:ref` from `base` again and again on a thread until stopped. A pull that
    finds the tag gone, or content missing, is recorded in `failures`; `digests` holds what
    each whole pull got, in order."""

    def __init__(self, base: str, name: str, ref: str) -> None:
        self.base, self.name, self.ref = base, name, ref
        self.digests: list[str] = []
        self.failures: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pull {name}:{ref}", daemon=True)

    def __enter__(self) -> PullLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                digest = pull(self.base, self.name, self.ref)
                failure = None if digest else f"{self.name}:{self.ref} is gone"
            except (MissingContent, OSError) as exc:
                digest, failure = None, str(exc)
            with self._cond:
                if failure:
                    self.failures.append(failure)
                else:
                    assert digest is not None
                    self.digests.append(digest)
                self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.digests) + len(self.failures)

    def wait(self, done: Callable[[PullLoop], bool], timeout: float = 120.0) -> bool:
        """Block until `done(self)` holds after some pull (or `timeout`); whether it does."""
        with self._cond:
            return self._cond.wait_for(lambda: done(self), timeout=timeout)

    def wait_pulls(self, count: int, timeout: float = 120.0) -> bool:
        """Block until `count` pulls in all have ended."""
        return self.wait(lambda loop: len(loop.digests) + len(loop.failures) >= count, timeout)
