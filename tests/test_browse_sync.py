"""The browse page through `sync`: a moved tag (the sync scoped to its repository by the
sync record) rewrites that repository's data file and the page, nothing of the others."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from testbed.registrish import registrish

from bench.huge import HugeWorkspace, move_tag, tag_name, write_layout
from registrish_lock.lock.lockfile import read_lock
from registrish_lock.serving.browse_page import current_data_files, render_tree_site
from registrish_lock.serving.routes import BROWSE_REL
from registrish_lock.tree.layout import Layout


def _age(*tops: Path) -> None:
    """Every mtime a minute back: what a scheduled sync sees (the record distrusts fresh
    stamps), so the next sync may be scoped."""
    past = time.time() - 60
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [*dirnames, *filenames]:
                os.utime(Path(dirpath) / name, (past, past), follow_symlinks=False)
        os.utime(top, (past, past))


def test_a_moved_tag_rewrites_only_its_repositorys_data_file(tmp_path: Path) -> None:
    for repo in ("r000", "r001"):
        write_layout(tmp_path / "layouts" / repo, repo, 5)
    ws = HugeWorkspace.create(tmp_path / "ws", tmp_path / "layouts", Path())
    config, layout = ws.path / "registrish.toml", Layout(ws.path / "public")
    registrish(config, "lock")
    registrish(config, "sync")
    _age(layout.root, layout.state, ws.path / "hosts")
    registrish(config, "sync")  # the aged stamps differ: full path, a fresh record
    before = current_data_files(layout)
    stamps = {n: layout.path(rel).stat().st_mtime_ns for n, rel in before.items()}

    move_tag(tmp_path / "layouts" / "r000", tag_name(2))
    registrish(config, "lock", "--upgrade", "huge/r000")
    proc = registrish(config, "sync", "-v")
    assert "reading only those" in proc.stderr  # scoped to huge/r000

    after = current_data_files(layout)
    assert after["huge/r001"] == before["huge/r001"]
    assert layout.path(after["huge/r001"]).stat().st_mtime_ns == stamps["huge/r001"]
    assert after["huge/r000"] != before["huge/r000"]
    assert not layout.path(before["huge/r000"]).exists()  # the page no longer names it
    assert sorted(p.name for p in layout.path("browse").iterdir()) == sorted(
        rel.removeprefix("browse/") for rel in after.values()
    )
    # what a full render of the tree gives: the same page and data
    full = render_tree_site(layout, read_lock(ws.path / "registrish.lock"))
    assert layout.path(BROWSE_REL).read_bytes() == full.page
    assert {rel: layout.path(rel).read_bytes() for rel in after.values()} == full.data
    moved = json.loads(full.data[after["huge/r000"]])
    assert moved["tags"][2][0] == tag_name(2)  # 1.0.4 … 1.0.0: newest first
