"""A large local sync in batches of repositories (tree/batched.py) writes the tree a whole
sync writes, keeps the record's `clean` honest, repairs what was deleted, and an
interrupted one never lists an incomplete repository. Batches of 4 or 5 tags here (the
default is `BATCH_TAGS`), in-process against offline OCI layouts."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_cli

from bench.huge import HugeWorkspace, write_layout
from registrish_lock.lock.lockfile import Lock
from registrish_lock.tree import batched
from registrish_lock.tree.layout import Layout

REPOS = {"r000": 5, "r001": 3, "r002": 2}


def _workspace(tmp: Path, layouts: Path, name: str) -> Path:
    ws = HugeWorkspace.create(tmp / name, layouts, Path())
    return ws.path / "registrish.toml"


@pytest.fixture
def layouts(tmp_path: Path) -> Path:
    for repo, tags in REPOS.items():
        write_layout(tmp_path / "layouts" / repo, repo, tags)
    return tmp_path / "layouts"


@pytest.fixture
def config(
    tmp_path: Path,
    layouts: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A locked workspace whose syncs run in batches of 4 tags."""
    monkeypatch.setattr(batched, "BATCH_TAGS", 4)
    return _locked(_workspace(tmp_path, layouts, "ws"), capsys)


def _sync(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = run_cli("sync", "-c", str(config), "--json", *args, capsys=capsys)
    assert code == 0, err
    doc: dict[str, object] = json.loads(out)
    return doc


def _files(top: Path) -> dict[str, bytes]:
    """Every file's bytes, the workspace's own path (host configs name it) left out."""
    here = str(top.parent.resolve()).encode()
    return {
        os.path.relpath(os.path.join(d, f), top): Path(d, f).read_bytes().replace(here, b"WS")
        for d, _dirs, names in os.walk(top)
        for f in names
    }


def _record(config: Path) -> dict[str, object]:
    doc: dict[str, object] = json.loads(Layout(config.parent / "public").sync_record.read_bytes())
    return doc


def _locked(config: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run_cli("lock", "-c", str(config), "-q", capsys=capsys)[0] == 0
    return config


def test_batches_write_what_one_whole_sync_writes(
    tmp_path: Path,
    layouts: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    whole = _locked(_workspace(tmp_path, layouts, "whole"), capsys)
    parts = _locked(_workspace(tmp_path, layouts, "parts"), capsys)
    one = _sync(whole, capsys)
    monkeypatch.setattr(batched, "BATCH_TAGS", 5)  # r000 alone, r001 with r002
    seen: list[list[str]] = []
    real = batched.batches

    def spy(*args: Any) -> Iterator[Lock]:
        for part in real(*args):
            seen.append(part.names())
            yield part

    monkeypatch.setattr(batched, "batches", spy)
    many = _sync(parts, capsys)
    assert seen == [["huge/r000"], ["huge/r001", "huge/r002"]]
    assert many["summary"] == {**one["summary"], "seconds": many["summary"]["seconds"]}  # type: ignore[index, dict-item]
    assert many["plan"] == one["plan"]
    for top in ("public", "hosts"):
        assert _files(parts.parent / top) == _files(whole.parent / top)
    assert _record(parts)["clean"] is True and _record(whole)["clean"] is True
    again = _sync(parts, capsys)
    assert again["from_record"] is True
    code, out, _ = run_cli("check", "-c", str(parts), "--local", capsys=capsys)
    assert code == 0, out


@pytest.mark.parametrize("litter", ["unlocked repository", "stored blob", "temp file"])
def test_what_gc_would_collect_makes_the_record_unclean(
    config: Path, capsys: pytest.CaptureFixture[str], litter: str
) -> None:
    _sync(config, capsys)
    layout = Layout(config.parent / "public")
    stale = {
        "unlocked repository": layout.path(Layout.rel_blob("huge/gone", "sha256:" + "e" * 64)),
        "stored blob": layout.store_blob("sha256:" + "e" * 64),
        "temp file": layout.tmp / "leftover",
    }[litter]
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"{}")
    layout.sync_record.unlink()
    assert _sync(config, capsys)["from_record"] is False
    assert _record(config)["clean"] is False
    code, out, _ = run_cli("gc", "-c", str(config), "--dry-run", capsys=capsys)
    assert code == 1, out  # gc scans, and finds it


def test_a_stale_tag_goes_and_the_record_stays_clean(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _sync(config, capsys)
    layout = Layout(config.parent / "public")
    tag = layout.path(Layout.rel_manifest("huge/r001", "1.0.1"))
    shutil.copy(tag, tag.with_name("old"))
    deleted = layout.path(Layout.rel_manifest("huge/r002", "1.0.1"))
    data = deleted.read_bytes()
    deleted.unlink()
    code, out, _ = run_cli("check", "-c", str(config), "--local", capsys=capsys)
    assert code == 1 and Layout.rel_manifest("huge/r002", "1.0.1") in out
    doc = _sync(config, capsys)
    assert doc["from_record"] is False
    assert not tag.with_name("old").exists() and deleted.read_bytes() == data
    assert _record(config)["clean"] is True


def test_an_interrupted_sync_lists_no_incomplete_repository(
    config: Path, layouts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blobs = layouts / "r001" / "blobs" / "sha256"
    index = json.loads((layouts / "r001" / "index.json").read_text())
    missing = blobs / index["manifests"][1]["digest"].removeprefix("sha256:")
    kept = missing.read_bytes()
    missing.unlink()  # the second batch cannot be read
    code, _, err = run_cli("sync", "-c", str(config), "-q", capsys=capsys)
    assert code != 0 and "Traceback" not in err
    layout = Layout(config.parent / "public")
    assert not layout.sync_record.exists()
    assert not layout.path(Layout.rel_catalog()).exists()
    assert layout.path(Layout.rel_tags_list("huge/r000")).is_file()  # the first batch is done
    missing.write_bytes(kept)
    assert _sync(config, capsys)["from_record"] is False
    catalog = json.loads(layout.path(Layout.rel_catalog()).read_bytes())
    assert catalog["repositories"] == [f"huge/{r}" for r in REPOS]
    assert _record(config)["clean"] is True


def test_a_repository_dropped_from_the_lock_loses_its_tags_as_in_a_whole_sync(
    tmp_path: Path,
    layouts: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batched, "BATCH_TAGS", 4)
    trees = {}
    for name, batch in (("whole", 1000), ("parts", 4)):
        config = _locked(_workspace(tmp_path, layouts, name), capsys)
        _sync(config, capsys)
        text = config.read_text()
        config.write_text(text[: text.index('[[image]]\nsource = "oci:layouts/r002"')])
        _locked(config, capsys)
        monkeypatch.setattr(batched, "BATCH_TAGS", batch)
        if name == "parts":  # a sync scoped to the changed repositories, then a full one
            assert _sync(config, capsys)["from_record"] is False
            (config.parent / "public" / "v2" / "huge" / "r002" / "manifests" / "1.0.0").write_text(
                "{}"
            )
            Layout(config.parent / "public").sync_record.unlink()
        _sync(config, capsys)
        trees[name] = _files(config.parent / "public")
        assert _record(config)["clean"] is False  # r002's content waits for gc
    assert trees["parts"] == trees["whole"]
    gone = Layout(tmp_path / "parts" / "public")
    assert not gone.path(Layout.rel_manifest("huge/r002", "1.0.0")).exists()
    assert gone.path(Layout.rel_tags_list("huge/r002")).exists()  # as a whole sync leaves it


def test_gc_in_batches_prints_and_removes_what_a_whole_gc_does(
    tmp_path: Path,
    layouts: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`registrish gc` of a lock larger than `BATCH_TAGS` (r002 dropped: an unlocked
    repository, and a stray store blob) says, removes and leaves what a whole one does."""
    outputs = {}
    for name, batch in (("whole", 1000), ("parts", 4)):
        monkeypatch.setattr(batched, "BATCH_TAGS", 4)
        config = _locked(_workspace(tmp_path, layouts, name), capsys)
        _sync(config, capsys)
        text = config.read_text()
        config.write_text(text[: text.index('[[image]]\nsource = "oci:layouts/r002"')])
        _locked(config, capsys)
        Layout(config.parent / "public").store_blob("sha256:" + "e" * 64).write_bytes(b"x")
        monkeypatch.setattr(batched, "BATCH_TAGS", batch)
        dry = run_cli("gc", "-c", str(config), "--dry-run", "--json", capsys=capsys)
        assert dry[0] == 1, dry[2]
        real = run_cli("gc", "-c", str(config), capsys=capsys)
        assert real[0] == 0, real[2]
        outputs[name] = (json.loads(dry[1]), real[1], _files(config.parent / "public"))
    assert outputs["parts"] == outputs["whole"]
    doc, said, _ = outputs["whole"]
    assert doc["emptied_repositories"] == ["huge/r002"] and "Freed" in said
    assert any(r["what"] == "stored blob" for r in doc["remove"])
