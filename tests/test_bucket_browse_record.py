"""The browse page's record in the state object, on a real S3 server (SeaweedFS on
loopback): a no-op whose page inputs did not change renders nothing, a sync renders the
page at most once, and a page or data file changed, deleted or added behind registrish's
back is still found and repaired. Real processes: marked slow."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.buckets import env_client, env_objects, layout_config, run_json, two_image_mirror
from testbed.images import write_random_image
from testbed.s3 import SeaweedS3

from registrish_lock.bucket import browse
from registrish_lock.cli import main
from registrish_lock.serving.browse_page import BrowseSite

pytestmark = pytest.mark.slow

PREFIX = "mirror/"


def data_files(seaweed: SeaweedS3) -> dict[str, bytes]:
    s3 = env_client()
    keys = [k for k in env_objects(seaweed) if k.startswith(PREFIX + "browse/")]
    return {k: s3.get_object(Bucket=seaweed.bucket, Key=k)["Body"].read() for k in keys}


def test_a_noop_renders_nothing_and_damage_is_still_repaired(
    seaweed: SeaweedS3,
    seaweed_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(two_image_mirror(tmp_path, seaweed.bucket, 21))
    renders: list[BrowseSite] = []
    original = browse.render

    def counted(*args: object, **kwargs: object) -> BrowseSite:
        site = original(*args, **kwargs)  # type: ignore[arg-type]
        renders.append(site)
        return site

    monkeypatch.setattr(browse, "render", counted)
    assert main(["sync", "-c", config]) == 0
    assert len(renders) == 1  # the cold sync: planned under the lease only
    s3 = env_client()
    page = s3.get_object(Bucket=seaweed.bucket, Key=PREFIX + "index.html")["Body"].read()
    good = data_files(seaweed)
    assert len(good) == 2

    def healed(label: str) -> None:
        """One sync: renders the page once, leaves page and data files as they were."""
        renders.clear()
        code, doc = run_json(capsys, "sync", "-c", config)
        assert code == 0 and len(renders) == 1, (label, doc)
        got = s3.get_object(Bucket=seaweed.bucket, Key=PREFIX + "index.html")["Body"].read()
        assert got == page and data_files(seaweed) == good, label
        renders.clear()
        code, doc = run_json(capsys, "sync", "-c", config)
        assert code == 0 and renders == [] and doc["bucket_requests"] == 2, (label, doc)

    # a no-op: the state object's GET and one listing page, nothing rendered
    before = env_objects(seaweed)
    renders.clear()
    code, noop = run_json(capsys, "sync", "-c", config)
    assert code == 0 and noop["bucket_requests"] == 2 and renders == [], noop
    assert env_objects(seaweed) == before

    first, second = sorted(good)
    # a data file deleted, then one damaged with its size kept (only its ETag tells)
    s3.delete_object(Bucket=seaweed.bucket, Key=first)
    healed("data file deleted")
    s3.put_object(Bucket=seaweed.bucket, Key=second, Body=bytes(reversed(good[second])))
    healed("data file damaged")
    # a data file no page names: deleted
    stray = f"{PREFIX}browse/{hashlib.sha256(b'x').hexdigest()}.json"
    s3.put_object(Bucket=seaweed.bucket, Key=stray, Body=b"{}")
    healed("stray data file")
    # the page deleted, then changed
    s3.delete_object(Bucket=seaweed.bucket, Key=PREFIX + "index.html")
    healed("page deleted")
    s3.put_object(Bucket=seaweed.bucket, Key=PREFIX + "index.html", Body=b"<p>hi</p>")
    healed("page changed")

    # a lock with more tags: the page follows, rendered once for the whole sync
    config = str(layout_config(tmp_path, f"s3://{seaweed.bucket}/mirror", ["a", "b"], ["v1", "v2"]))
    assert main(["lock", "-c", config]) == 0
    renders.clear()
    assert main(["sync", "-c", config]) == 0
    assert len(renders) == 1
    assert set(data_files(seaweed)) == {PREFIX + rel for rel in renders[0].data}
    renders.clear()
    code, noop = run_json(capsys, "sync", "-c", config)
    assert code == 0 and renders == [] and noop["bucket_requests"] == 2, noop


def test_a_blob_over_the_copy_limit_is_copied_by_the_transfer_manager(
    seaweed: SeaweedS3, seaweed_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blob shared by two repositories above CopyObject's limit goes through s3transfer's
    managed copy (boto3 is not imported for it); the limit is lowered to reach that path."""
    from s3transfer.manager import TransferManager  # type: ignore[import-untyped]

    from registrish_lock.bucket import servercopy

    monkeypatch.setattr(servercopy, "COPY_MAX", 0)
    copied: list[str] = []
    original = TransferManager.copy

    def counted(
        self: TransferManager, source: object, bucket: str, key: str, **kw: object
    ) -> object:
        copied.append(key)
        return original(self, source, bucket, key, **kw)

    monkeypatch.setattr(TransferManager, "copy", counted)
    write_random_image(tmp_path / "layout", "v1", [5000], seed=23)
    config = str(layout_config(tmp_path, f"s3://{seaweed.bucket}/mirror", ["a", "b"], ["v1"]))
    assert main(["lock", "-c", config]) == 0
    assert main(["sync", "-c", config]) == 0
    s3 = env_client()
    blobs = {k: v for k, v in env_objects(seaweed).items() if "/blobs/" in k}
    by_repo = {k.split("/")[2]: k.rsplit("/", 1)[1] for k in blobs}
    assert set(by_repo) == {"a", "b"} and len(blobs) == 4  # a layer and a config each
    assert len(copied) == 2 and all(k.startswith(PREFIX + "v2/") for k in copied), copied
    for key in blobs:
        got = s3.get_object(Bucket=seaweed.bucket, Key=key)
        digest = key.rsplit("/", 1)[1]
        assert "sha256:" + hashlib.sha256(got["Body"].read()).hexdigest() == digest
        assert got["ContentType"] == "application/octet-stream"
        assert got["Metadata"] == {"sha256": digest}
