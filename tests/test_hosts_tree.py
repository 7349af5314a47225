"""Tests that the tree `support.trees.build_tree` writes is what layout.py says."""

from __future__ import annotations

import os
from pathlib import Path

from support.trees import build_tree, sha

from registrish_lock.oci import mediatypes
from registrish_lock.tree.layout import Layout


def test_tree_has_every_manifest_kind_and_hardlinked_twins(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    kinds = {mt for _, mt in tree.refs.values()}
    assert kinds == set(mediatypes.MANIFEST_TYPES)
    for key, (digest, mt) in tree.refs.items():
        name, tag = key.split(":")
        exact = tree.layout.path(Layout.rel_manifest(name, tag))
        twin = tree.layout.path(Layout.rel_manifest_twin(name, tag, mt))
        assert os.path.samefile(exact, twin)
        assert sha(exact.read_bytes()) == digest


def test_tree_blob_is_a_hardlink_into_the_store(tmp_path: Path) -> None:
    tree = build_tree(tmp_path)
    name, digest, data = tree.blob
    path = tree.layout.path(Layout.rel_blob(name, digest))
    assert path.read_bytes() == data
    assert os.path.samefile(path, tree.layout.store_blob(digest))
