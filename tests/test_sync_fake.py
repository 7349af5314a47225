"""The sync tests' fake upstream (`support.fake_upstream`) does what they rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fake_upstream import HOST, FakeUpstream, Interrupted

from registrish_lock.oci.reference import Reference
from registrish_lock.upstream.protocols import BlobRequest


def test_fake_resumes_a_cut_download_from_the_partial_file(tmp_path: Path) -> None:
    up = FakeUpstream()
    digest = up.put_blob(b"x" * 10000)
    up.cut_at[digest] = 5000
    dest = tmp_path / "blob.partial"
    repo = Reference(HOST, "app")
    with pytest.raises(Interrupted):
        up.fetch_blob(BlobRequest(repo, digest, 10000, dest))
    assert dest.stat().st_size == 5000
    up.fetch_blob(BlobRequest(repo, digest, 10000, dest))
    assert dest.read_bytes() == b"x" * 10000
    assert up.ranges == [(digest, 0), (digest, 5000)]
