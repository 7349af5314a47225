"""Locks for the browse page tests (test_browse.py, test_browse_chromium.py), with the
manifests and configs the page reads: hostile strings everywhere markup could hide, and
a big lock of 50 names x 24 tags."""

from __future__ import annotations

import json

from registrish_lock.lock.lockfile import LockedManifest, LockedTag
from registrish_lock.oci import mediatypes
from support.trees import OCI_CONFIG, OCI_LAYER, sha


def hostile_lock_and_bytes() -> tuple[list[LockedTag], dict[str, bytes], dict[str, bytes]]:
    """Valid names and tags that look like markup or script, plus hostile strings where
    the grammar does not reach: a platform in the lock, an upstream config's os/arch,
    and an artifact type with `&`."""
    evil = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
    config = json.dumps({"os": "linux", "architecture": evil, "variant": "'\"&<>"}).encode()
    image = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha(b"l"), "size": 1}],
        }
    ).encode()
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_MANIFEST,
            "artifactType": "application/x&amp+script",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha(b"{}"),
                "size": 2,
            },
            "layers": [],
        }
    ).encode()
    index_child = sha(b"child")
    tags = [
        LockedTag("script/alert", "_--x..", "127.0.0.1:5000/a", sha(image), mediatypes.OCI_MANIFEST,
                  len(image), 10),
        LockedTag("a__b--c/x.y", "Z_9.-", "127.0.0.1:5000/a", sha(artifact),
                  mediatypes.OCI_MANIFEST, len(artifact), 5),
        LockedTag("onerror", "v1", "127.0.0.1:5000/a", sha(b"idx"), mediatypes.OCI_INDEX, 3, 3,
                  (LockedManifest(f"linux/{evil}", index_child, mediatypes.OCI_MANIFEST, 5),)),
    ]  # fmt: skip
    return tags, {sha(image): image, sha(artifact): artifact}, {sha(config): config}


def big_lock(names: int, tags_per_name: int) -> tuple[list[LockedTag], dict[str, bytes]]:
    tags: list[LockedTag] = []
    manifests: dict[str, bytes] = {}
    for n in range(names):
        for t in range(tags_per_name):
            plats = []
            for arch in ("amd64", "arm64"):
                body = json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": mediatypes.OCI_MANIFEST,
                        "config": {"mediaType": OCI_CONFIG, "digest": sha(b"c"), "size": 900},
                        "layers": [
                            {"mediaType": OCI_LAYER, "digest": sha(f"{n}{t}{arch}".encode()),
                             "size": 3_000_000 + n * t}
                        ],
                    }
                ).encode()  # fmt: skip
                manifests[sha(body)] = body
                plats.append(LockedManifest(f"linux/{arch}", sha(body), mediatypes.OCI_MANIFEST,
                                            len(body)))  # fmt: skip
            index = f"index {n} {t}".encode()
            tags.append(
                LockedTag(f"team/image-{n:03d}", f"1.{t}.0", f"docker.io/library/image-{n}",
                          sha(index), mediatypes.OCI_INDEX, 400, 6_000_000 + t, tuple(plats))
            )  # fmt: skip
    return tags, manifests
