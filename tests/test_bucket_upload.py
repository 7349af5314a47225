"""`bucket.upload` against a real S3 server (SeaweedFS): a blob streamed into a bucket is
visible only once verified; small objects go in one PUT, large ones in parts; headers are
exact; what a killed run leaves is aborted; memory does not grow with the blob."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testbed.bucketchild import MiB, client_for, expect_line, running_seaweedfs, s3_client, spawn
from testbed.s3 import SeaweedS3

from registrish_lock.bucket.client import PublishError
from registrish_lock.bucket.upload import (
    DEFAULT_PART_SIZE,
    MAX_PARTS,
    MIN_PART,
    BucketSink,
    PartBuffers,
    abort_stale_uploads,
    part_size_for,
)
from registrish_lock.errors import ExitCode, IntegrityError, RegistrishError

BLOB_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweedfs(tmp_path_factory.mktemp("s3")) as server:
        yield server


class Recorder:
    """The real client, with the name of every operation called on it kept in `calls`."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.client, name)
        if not callable(target) or name.startswith("get_paginator"):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return target(*args, **kwargs)

        return call


@pytest.fixture
def client(s3: SeaweedS3) -> Recorder:
    return Recorder(client_for(s3))


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}/"


def blob(size: int) -> tuple[bytes, str]:
    data = (hashlib.sha256(str(size).encode()).digest() * (size // 32 + 1))[:size]
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def sink_for(client: Any, key: str, data: bytes, digest: str, **kw: Any) -> BucketSink:
    return BucketSink(
        client,
        "127",
        key,
        digest=digest,
        size=len(data),
        content_type=BLOB_TYPE,
        cache_control=IMMUTABLE,
        what=f"blob {digest[:19]}",
        **kw,
    )


def head(client: Any, key: str) -> dict[str, Any] | None:
    try:
        answer: dict[str, Any] = client.client.head_object(Bucket="127", Key=key)
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return None
        raise
    return answer


def uploads(client: Any, prefix: str) -> list[str]:
    answer = client.client.list_multipart_uploads(Bucket="127", Prefix=prefix)
    return [u["Key"] for u in answer.get("Uploads", [])]


def stream(sink: BucketSink, data: bytes, chunk: int = 300_001) -> None:
    for start in range(0, len(data), chunk):
        sink.write(data[start : start + chunk])


def test_part_size_stays_within_s3_limits() -> None:
    assert part_size_for(1) == DEFAULT_PART_SIZE == MIN_PART
    assert part_size_for(10_000 * 8 * MiB, 8 * MiB) == 8 * MiB
    big = 10_000 * 8 * MiB + 1
    assert part_size_for(big, 8 * MiB) == 9 * MiB and -(-big // part_size_for(big)) <= MAX_PARTS
    assert part_size_for(10_000 * MIN_PART + 1) == 6 * MiB
    five_tib = 5 * 1024 * 1024 * MiB
    size = part_size_for(five_tib)
    assert size % MiB == 0 and -(-five_tib // size) <= MAX_PARTS
    assert part_size_for(100, MIN_PART) == MIN_PART
    with pytest.raises(ValueError):
        part_size_for(100, MIN_PART - 1)


def test_small_object_is_one_put_with_exact_headers(client: Recorder, prefix: str) -> None:
    data, digest = blob(1000)
    seen: list[int] = []
    sink = sink_for(client, prefix + "small", data, digest, on_bytes=seen.append)
    stream(sink, data, 333)
    assert head(client, prefix + "small") is None  # buffered until verified
    sink.finish()
    assert client.calls == ["put_object"]
    got = client.client.get_object(Bucket="127", Key=prefix + "small")
    assert got["Body"].read() == data
    assert got["ContentType"] == BLOB_TYPE
    assert got["CacheControl"] == IMMUTABLE
    assert got["Metadata"] == {"sha256": digest}  # as publish writes it
    assert sum(seen) == 1000
    assert sink.uploaded is not None and sink.uploaded.size == 1000
    assert sink.uploaded.etag == got["ETag"].strip('"')


def test_object_of_exactly_one_part_is_one_put(client: Recorder, prefix: str) -> None:
    data, digest = blob(MIN_PART)
    sink = sink_for(client, prefix + "one", data, digest, part_size=MIN_PART)
    stream(sink, data)
    sink.finish()
    assert client.calls == ["put_object"]
    assert client.client.get_object(Bucket="127", Key=prefix + "one")["Body"].read() == data


def test_large_blob_goes_in_parts_and_appears_only_when_complete(
    client: Recorder, prefix: str
) -> None:
    data, digest = blob(2 * MIN_PART + 12345)
    seen: list[int] = []
    sink = sink_for(client, prefix + "big", data, digest, part_size=MIN_PART, on_bytes=seen.append)
    stream(sink, data)
    # every byte is in the store (two parts sent, the third waits for verification) …
    assert client.calls == ["create_multipart_upload", "upload_part", "upload_part"]
    assert uploads(client, prefix) == [prefix + "big"]
    assert head(client, prefix + "big") is None  # … yet nothing is visible
    sink.finish()
    assert client.calls[3:] == ["upload_part", "complete_multipart_upload"]
    got = client.client.get_object(Bucket="127", Key=prefix + "big")
    assert got["Body"].read() == data
    assert (got["ContentType"], got["CacheControl"]) == (BLOB_TYPE, IMMUTABLE)
    assert got["Metadata"] == {"sha256": digest}  # as publish writes it
    assert uploads(client, prefix) == []
    assert sum(seen) == len(data)
    sink.close()  # after finish: nothing to abort, no error


def test_corrupt_stream_leaves_nothing_and_aborts(client: Recorder, prefix: str) -> None:
    data, digest = blob(2 * MIN_PART + 7)
    bad = bytearray(data)
    bad[-1] ^= 1
    sink = sink_for(client, prefix + "bad", data, digest, part_size=MIN_PART)
    stream(sink, bytes(bad))
    with pytest.raises(IntegrityError) as caught:
        sink.finish()
    message = str(caught.value)
    assert "\n" not in message and f"expected {len(data)} bytes with digest {digest}" in message
    assert caught.value.exit_code == ExitCode.INTEGRITY
    assert "abort_multipart_upload" in client.calls
    assert "complete_multipart_upload" not in client.calls
    assert head(client, prefix + "bad") is None
    assert uploads(client, prefix) == []


def test_short_stream_and_small_corrupt_object_are_refused(client: Recorder, prefix: str) -> None:
    data, digest = blob(5000)
    short = sink_for(client, prefix + "short", data, digest)
    short.write(data[:4999])
    with pytest.raises(IntegrityError, match="4999 bytes"):
        short.finish()
    wrong = sink_for(client, prefix + "wrong", data, digest)
    wrong.write(bytes(5000))
    with pytest.raises(IntegrityError):
        wrong.finish()
    assert client.calls == []  # never sent: small objects are verified before the one PUT
    assert head(client, prefix + "short") is None and head(client, prefix + "wrong") is None


def test_bytes_past_the_declared_size_are_refused(client: Recorder, prefix: str) -> None:
    data, digest = blob(MIN_PART + 10)
    sink = sink_for(client, prefix + "over", data, digest, part_size=MIN_PART)
    stream(sink, data)
    with pytest.raises(IntegrityError, match=f"more than the declared {len(data)} bytes"):
        sink.write(b"x")
    sink.close()  # what a caller's `finally` does: the started upload is aborted
    assert "abort_multipart_upload" in client.calls
    assert uploads(client, prefix) == [] and head(client, prefix + "over") is None


def test_restart_aborts_and_starts_over(client: Recorder, prefix: str) -> None:
    data, digest = blob(2 * MIN_PART + 99)
    seen: list[int] = []
    sink = sink_for(
        client, prefix + "again", data, digest, part_size=MIN_PART, on_bytes=seen.append
    )
    stream(sink, b"garbage!" * (MIN_PART // 8 + 100))  # a part of wrong bytes is already sent
    assert uploads(client, prefix) == [prefix + "again"]
    sink.restart()
    assert sink.written == 0 and sum(seen) == 0  # progress taken back
    assert uploads(client, prefix) == []
    stream(sink, data)
    sink.finish()
    assert client.client.get_object(Bucket="127", Key=prefix + "again")["Body"].read() == data
    assert client.calls.count("create_multipart_upload") == 2


class Parallel(Recorder):
    """Holds the first two `upload_part` calls until both are on their way (a barrier:
    parts sent one after the other break it, and the upload fails)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.both = threading.Barrier(2, timeout=60)

    def upload_part(self, **kwargs: Any) -> Any:
        self.calls.append("upload_part")
        if kwargs["PartNumber"] <= 2:
            self.both.wait()
        return self.client.upload_part(**kwargs)


def test_shared_part_buffers_send_parts_together_and_are_reused(s3: SeaweedS3, prefix: str) -> None:
    client = Parallel(client_for(s3))
    parts = PartBuffers(3, MIN_PART)
    try:
        small, small_digest = blob(1000)
        sink = sink_for(client, prefix + "small", small, small_digest, parts=parts)
        stream(sink, small)
        sink.finish()
        assert parts.allocated == 0  # a small object never waits for a part buffer
        for key in ("big", "again"):  # the second blob reuses the first one's buffers
            data, digest = blob(4 * MIN_PART + 3)
            sink = sink_for(client, prefix + key, data, digest, parts=parts)
            stream(sink, data)
            sink.finish()
            got = client.client.get_object(Bucket="127", Key=prefix + key)["Body"].read()
            assert got == data
            assert parts.allocated <= 3
        assert not client.both.broken and client.calls.count("upload_part") == 10
        assert parts.idle == parts.allocated
    finally:
        parts.close()


class FailsPartTwo(Recorder):
    def upload_part(self, **kwargs: Any) -> Any:
        self.calls.append("upload_part")
        if kwargs["PartNumber"] == 2:  # the store's own refusal: an upload it does not know
            kwargs["UploadId"] = "no-such-upload"
        return self.client.upload_part(**kwargs)


def test_a_part_refused_by_the_store_fails_the_blob_and_aborts(s3: SeaweedS3, prefix: str) -> None:
    client = FailsPartTwo(client_for(s3))
    parts = PartBuffers(2, MIN_PART)
    try:
        data, digest = blob(5 * MIN_PART)
        sink = sink_for(client, prefix + "refused", data, digest, parts=parts)
        with pytest.raises(PublishError) as caught:
            stream(sink, data)  # a later write sees the failed part …
            sink.finish()  # … or at the latest the finish
        assert f"uploading s3://127/{prefix}refused" in str(caught.value)
        sink.close()
        assert "abort_multipart_upload" in client.calls
        assert uploads(client, prefix) == [] and head(client, prefix + "refused") is None
        assert parts.idle == parts.allocated > 0  # every buffer was given back
    finally:
        parts.close()


def test_copy_from_reads_at_most_size(client: Recorder, prefix: str) -> None:
    import io

    data, digest = blob(3000)
    src = io.BytesIO(data + b"trailing")
    sink = sink_for(client, prefix + "copied", data, digest)
    sink.copy_from(src)
    assert src.read() == b"trailing"
    sink.finish()
    assert client.client.get_object(Bucket="127", Key=prefix + "copied")["Body"].read() == data


def test_store_errors_are_one_line_without_credentials(s3: SeaweedS3, prefix: str) -> None:
    wrong_secret = "not-the-secret-" + uuid.uuid4().hex
    client = s3_client(s3.api_url, s3.access_key, wrong_secret)
    data, digest = blob(100)
    sink = BucketSink(
        client,
        "127",
        prefix + "x",
        digest=digest,
        size=100,
        content_type=BLOB_TYPE,
        cache_control=IMMUTABLE,
        what="blob",
    )
    sink.write(data)
    with pytest.raises(PublishError) as caught:
        sink.finish()
    message = str(caught.value)
    assert message.startswith(f"uploading s3://127/{prefix}x: ")
    assert "\n" not in message and wrong_secret not in message and s3.access_key not in message
    assert caught.value.exit_code == ExitCode.UPSTREAM


def test_more_than_5_tib_is_refused_up_front(client: Recorder) -> None:
    with pytest.raises(RegistrishError, match="5 TiB"):
        BucketSink(
            client,
            "127",
            "k",
            digest="sha256:" + "0" * 64,
            size=5 * 1024 * 1024 * MiB + 1,
            content_type=BLOB_TYPE,
            cache_control=IMMUTABLE,
            what="blob",
        )


def test_killed_upload_is_aborted_by_the_next_run(s3: SeaweedS3, prefix: str) -> None:
    client = client_for(s3)
    other = client.create_multipart_upload(Bucket="127", Key="elsewhere/" + prefix + "keep")
    child = spawn(
        s3, "upload", "--key", prefix + "killed", "--size", str(12 * MiB), "--part-size", "5",
        "--stop-after-part",
    )  # fmt: skip
    try:
        expect_line(child, "PART-SENT")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
    assert child.returncode == -signal.SIGKILL
    left = client.list_multipart_uploads(Bucket="127", Prefix=prefix)["Uploads"]
    assert [u["Key"] for u in left] == [prefix + "killed"]
    parts = client.list_parts(Bucket="127", Key=prefix + "killed", UploadId=left[0]["UploadId"])
    assert len(parts["Parts"]) >= 1  # the killed run really had bytes in the store
    # a recent upload survives an age limit; then the lease holder aborts everything under it
    assert abort_stale_uploads(client, "127", prefix, older_than=3600) == 0
    assert abort_stale_uploads(client, "127", prefix) == 1
    assert client.list_multipart_uploads(Bucket="127", Prefix=prefix).get("Uploads", []) == []
    assert abort_stale_uploads(client, "127", prefix) == 0
    kept = client.list_multipart_uploads(Bucket="127", Prefix="elsewhere/" + prefix)["Uploads"]
    assert [u["UploadId"] for u in kept] == [other["UploadId"]]  # outside the prefix: kept
    client.abort_multipart_upload(
        Bucket="127", Key="elsewhere/" + prefix + "keep", UploadId=other["UploadId"]
    )
    assert head(Recorder(client), prefix + "killed") is None


def test_memory_does_not_grow_with_the_blob(s3: SeaweedS3, prefix: str, tmp_path: Path) -> None:
    """300 MiB streamed (default 5 MiB parts) in a subprocess: its peak RSS exceeds its RSS
    before the upload by about one part buffer, not by the blob — the buffering is bounded. (A correctness bound, not a
    timing: the figure depends only on what is held in memory.) The peak is the child's
    VmHWM: `ru_maxrss` would start at the pytest parent's size (kept across execve)."""
    size = 300 * MiB
    child = spawn(s3, "upload", "--key", prefix + "huge", "--size", str(size))
    out, err = child.communicate(timeout=600)
    assert child.returncode == 0, err[-2000:]
    figures = json.loads(out.strip().splitlines()[-1])
    grown_mib = (figures["peak_kb"] - figures["before_kb"]) / 1024
    assert figures["part"] == DEFAULT_PART_SIZE
    # one part buffer plus small change; a second copy of a part would pass two
    assert grown_mib < 2 * DEFAULT_PART_SIZE / MiB, (
        f"peak RSS grew by {grown_mib:.0f} MiB for a {size // MiB} MiB blob"
    )
    got = client_for(s3).head_object(Bucket="127", Key=prefix + "huge")
    assert got["ContentLength"] == size
    (tmp_path / "rss.json").write_text(json.dumps({**figures, "grown_mib": grown_mib}))


def test_publish_uploads_share_the_stores_part_buffers(
    s3: SeaweedS3, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Boto3Store.put_file` (publish) streams through one set of part buffers for all its
    parallel uploads, as a bucket sync's blobs do: never more than `part_buffers` exist."""
    from concurrent.futures import ThreadPoolExecutor

    from registrish_lock.bucket import client as client_mod

    made: list[PartBuffers] = []

    class Kept(PartBuffers):
        def __init__(self, count: int, size: int) -> None:
            super().__init__(count, size)
            made.append(self)

    monkeypatch.setattr(client_mod, "PartBuffers", Kept)
    store = client_mod.Boto3Store(client_for(s3), "127", part_size=MIN_PART, part_buffers=2)
    files = {}
    for n in range(4):
        data, digest = blob(3 * MIN_PART + n)
        (tmp_path / f"f{n}").write_bytes(data)
        files[f"{prefix}f{n}"] = (tmp_path / f"f{n}", data, digest)
    try:
        with ThreadPoolExecutor(4) as pool:
            for future in [
                pool.submit(
                    store.put_file,
                    key,
                    path,
                    content_type=BLOB_TYPE,
                    cache_control=IMMUTABLE,
                    sha256=digest,
                )
                for key, (path, _data, digest) in files.items()
            ]:
                future.result()
        assert len(made) == 1 and 0 < made[0].allocated <= 2
        assert made[0].idle == made[0].allocated  # every buffer given back
    finally:
        store.close()
    for key, (_path, data, _digest) in files.items():
        assert client_for(s3).get_object(Bucket="127", Key=key)["Body"].read() == data
