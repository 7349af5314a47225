"""A tag moved by `sync` while `serve` answers a pull of it (found while writing
test_crash.py): the answer's length, Docker-Content-Digest and body must describe one
version of the manifest, the old or the new, never a mix.

`RegistryHandler` sends what `TreeResolver.answer` returned, after it returned; these
tests move the tag exactly in between (what a thread switch in the threaded server does
at random) and check what would go on the wire.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from registrish_lock.oci import mediatypes
from registrish_lock.serving.serve import Answer, TreeResolver
from registrish_lock.tree.layout import Layout
from registrish_lock.tree.state import write_manifest


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(media_type: str, n_layers: int) -> bytes:
    layers = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": sha256(bytes([i])),
            "size": i + 1,
        }
        for i in range(n_layers)
    ]
    if media_type == mediatypes.OCI_INDEX:
        doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": layers}
    else:
        config = {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(b"c"),
            "size": 1,
        }
        doc = {"schemaVersion": 2, "mediaType": media_type, "config": config, "layers": layers}
    return json.dumps(doc).encode()


def put_tag(layout: Layout, data: bytes, media_type: str, stale: tuple[str, ...] = ()) -> None:
    """What `sync` does to move `crash/app:v1` (tree.write_manifest: new twin, exact file,
    then twins of another kind removed)."""
    rel = layout.rel_manifest("crash/app", "v1")
    twin = layout.rel_manifest_twin("crash/app", "v1", media_type)
    write_manifest(layout, rel, twin, data, stale)


def on_the_wire(answer: Answer) -> bytes:
    """The body the handler sends for ``answer``, read now (after the tag moved)."""
    if answer.file is None:
        return answer.body
    with answer.file.open("rb") as handle:
        handle.seek(answer.offset)
        return handle.read(answer.size)


def header(answer: Answer, name: str) -> str | None:
    return next((v for k, v in answer.headers if k.lower() == name.lower()), None)


@pytest.mark.parametrize(
    ("old_type", "new_type"),
    [
        (mediatypes.OCI_MANIFEST, mediatypes.OCI_MANIFEST),  # same kind, other length
        (mediatypes.OCI_INDEX, mediatypes.OCI_MANIFEST),  # the old kind's twin goes away
        (mediatypes.OCI_MANIFEST, mediatypes.OCI_INDEX),
    ],
    ids=["same-kind", "index-to-manifest", "manifest-to-index"],
)
def test_a_tag_moved_between_answer_and_send_is_served_whole(
    old_type: str, new_type: str, tmp_path: Path
) -> None:
    layout = Layout(tmp_path)
    old, new = manifest(old_type, 1), manifest(new_type, 3)
    assert len(old) != len(new)
    resolver = TreeResolver(layout)

    def twins_of(media_type: str) -> tuple[str, ...]:
        return (
            (layout.rel_manifest_twin("crash/app", "v1", media_type),)
            if old_type != new_type
            else ()
        )

    for method in ("GET", "HEAD"):
        put_tag(layout, old, old_type, twins_of(new_type))
        answer = resolver.answer(method, "/v2/crash/app/manifests/v1", {})
        assert answer.status == 200
        put_tag(layout, new, new_type, twins_of(old_type))  # sync moves the tag right now
        body = on_the_wire(answer)
        # Whatever version the answer is, all of it is that version.
        assert body in (old, new)
        assert answer.length == len(body)
        assert header(answer, "Docker-Content-Digest") == sha256(body)
        assert header(answer, "Content-Type") == (old_type if body == old else new_type)
