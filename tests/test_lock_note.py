"""`registrish lock` with work to do, from the command line: while `locked.json` vouches
for the lock's bytes, the blocks of the repositories that keep their pins are copied, and
the result is byte for byte what a run without the note writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from testbed.registrish import registrish

from bench.huge import HugeWorkspace, move_tag, tag_name, write_layout
from registrish_lock.lock.config import load_config

COPYING = "copying the blocks it keeps"
TAGS = 4


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Three layouts of TAGS tags, locked with a store directory (so the note is kept)."""
    for n in range(3):
        write_layout(tmp_path / "layouts" / f"r{n:03d}", f"r{n:03d}", TAGS)
    ws = HugeWorkspace.create(tmp_path / "ws", tmp_path / "layouts", Path())
    config = ws.path / "registrish.toml"
    load_config(config).layout.state.mkdir(parents=True)
    registrish(config, "lock")
    return ws.path


def lock(ws: Path, *args: str, check: bool = True) -> tuple[dict[str, object], str, int]:
    proc = registrish(ws / "registrish.toml", "lock", "-v", "--json", *args, check=check)
    return json.loads(proc.stdout), proc.stderr, proc.returncode


def test_an_upgrade_copies_the_kept_blocks_and_writes_the_same_bytes(
    workspace: Path, tmp_path: Path
) -> None:
    before = (workspace / "registrish.lock").read_text()
    moved = move_tag(tmp_path / "layouts" / "r001", tag_name(2))
    other = shutil.copytree(workspace, tmp_path / "other", symlinks=True)
    (other / ".registrish-public" / "locked.json").unlink()

    doc, err, _ = lock(workspace, "--upgrade", "huge/r001")
    assert COPYING in err and doc["moved"] == 1 and doc["unchanged"] == 3 * TAGS - 1
    doc, err, _ = lock(other, "--upgrade", "huge/r001")
    assert COPYING not in err and doc["moved"] == 1
    after = (workspace / "registrish.lock").read_text()
    assert (other / "registrish.lock").read_text() == after
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert changed[0] == f'digest = "{moved}"' and len(changed) <= 3  # digest, sizes
    # and the next run trusts the lock it just wrote
    assert COPYING in lock(workspace, "--upgrade", "huge/r000")[1]


def test_a_hand_edit_is_not_vouched_for_and_is_written_back_in_lock_s_form(
    workspace: Path,
) -> None:
    path = workspace / "registrish.lock"
    canonical = path.read_text()
    path.write_text(canonical.replace("\nsize = ", "\nsize = +", 1))
    doc, err, _ = lock(workspace, "--upgrade", "huge/r002")
    assert COPYING not in err and doc["written"] is True and doc["changes"] == []
    assert path.read_text() == canonical


def test_a_dry_run_and_a_check_write_nothing(workspace: Path, tmp_path: Path) -> None:
    path = workspace / "registrish.lock"
    before = path.read_bytes()
    move_tag(tmp_path / "layouts" / "r000", tag_name(0))
    doc, _, code = lock(workspace, "--upgrade", "huge/r000", "--dry-run", check=False)
    assert code == 1 and doc["moved"] == 1 and doc["written"] is False
    doc, _, code = lock(workspace, "--check")
    assert code == 0 and doc["stale"] is False
    assert path.read_bytes() == before
    assert sorted(p.name for p in workspace.iterdir() if p.name.startswith(".tmp")) == []
