"""An in-memory S3 bucket speaking publish's `Store` protocol (the double of
`bucket.client.Boto3Store`): it records every call in order and can fail on the Nth PUT."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from registrish_lock.bucket.client import RemoteObject, file_mismatch
from registrish_lock.bucket.target import S3Target
from registrish_lock.console import Console
from registrish_lock.errors import RegistrishError
from registrish_lock.progress import QuietProgress
from registrish_lock.serving.publish import PublishResult, publish
from registrish_lock.serving.routes import Policy
from registrish_lock.tree.layout import Layout

#: The policy of the in-memory publishes (tags cached a minute).
POLICY = Policy(tag_cache_seconds=60)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemoryStore:
    """`objects`: key → (bytes, Content-Type, Cache-Control); `metadata`: key → its
    `sha256`. `puts`/`copies`/`deletes` list the keys written in order; `events` has
    ("put", key) and ("copy", key, source) in the order the writes completed."""

    def __init__(self, *, fail_after: int | None = None) -> None:
        self.objects: dict[str, tuple[bytes, str, str]] = {}
        self.metadata: dict[str, str] = {}
        self.puts: list[str] = []
        self.copies: list[str] = []
        self.deletes: list[str] = []
        self.events: list[tuple[str, ...]] = []
        self.lists = 0
        self.fail_after = fail_after
        self._lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        self.closed = True  # `publish` closes the store it opened (its part senders)

    def list_objects(self, prefix: str) -> Iterator[RemoteObject]:
        self.lists += 1
        for key, (data, _, _) in sorted(self.objects.items()):
            if key.startswith(prefix):
                yield RemoteObject(key, len(data), md5(data))

    def _put(self, key: str, data: bytes, content_type: str, cache_control: str) -> None:
        with self._lock:
            if self.fail_after is not None and len(self.puts) >= self.fail_after:
                raise RegistrishError(f"injected failure at {key}")
            self.puts.append(key)
            self.events.append(("put", key))
            self.objects[key] = (data, content_type, cache_control)
            self.metadata[key] = sha256_of(data)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str, cache_control: str, sha256: str
    ) -> None:
        assert sha256 == sha256_of(data)
        self._put(key, data, content_type, cache_control)

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        cache_control: str,
        sha256: str,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        data = path.read_bytes()
        if on_bytes:
            on_bytes(len(data))
        got = sha256_of(data)
        if got != sha256:  # as `BucketSink`: nothing visible unless the bytes match
            raise file_mismatch(path, len(data), got)
        self._put(key, data, content_type, cache_control)

    def copy(
        self,
        source: str,
        key: str,
        *,
        size: int,
        content_type: str,
        cache_control: str,
        sha256: str,
    ) -> None:
        with self._lock:
            # an object is in `objects` only once its write completed
            assert source in self.objects, f"copy of {source}, which is not (yet) in the bucket"
            data = self.objects[source][0]
            assert len(data) == size and self.metadata.get(source, sha256) == sha256, source
            self.copies.append(key)
            self.events.append(("copy", key, source))
            self.objects[key] = (data, content_type, cache_control)
            self.metadata[key] = sha256

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.deletes.append(key)
            self.objects.pop(key, None)
            self.metadata.pop(key, None)


def run_publish(
    root: Path, store: MemoryStore, target: S3Target | None = None, **kwargs: Any
) -> PublishResult:
    """`publish` the tree at `root` into `store` (quietly, 4 jobs, `POLICY`)."""
    return publish(
        layout=Layout(root),
        target=target or S3Target("bucket"),
        store=store,
        policy=POLICY,
        console=Console(verbosity=-1),
        progress=QuietProgress(),
        jobs=4,
        **kwargs,
    )
