"""The bad-input corpus (``tests/bad_inputs``) through the real CLI in a subprocess.

Every file is one defect away from a valid input; its first line says what the error must
name (``# expect: <key>``). Each run must exit 2 with exactly one ``error:`` line naming the
file and that key, at most one ``hint:`` line, no traceback, and write nothing at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from registrish_lock.cli import main
from registrish_lock.lock.lockfile import loads

CORPUS = Path(__file__).parent / "bad_inputs"
REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((CORPUS / "config").glob("*.toml"))
LOCKS = sorted((CORPUS / "lock").glob("*.lock"))
VALID_CONFIG = CORPUS / "lock" / "registrish.toml"
VALID_LOCK = CORPUS / "lock" / "valid.lock.txt"


def expectation(path: Path) -> str:
    first = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: KEY'"
    return first.removeprefix("# expect: ")


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NO_COLOR": "1"}
    # Credentials must never be needed: no network is reached with a bad input.
    env = {k: v for k, v in env.items() if not k.startswith("REGISTRISH_AUTH_")}
    return subprocess.run(
        [sys.executable, "-m", "registrish_lock", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(directory.rglob("*"))
    }


def assert_one_line_error(
    proc: subprocess.CompletedProcess[str], named_file: Path, key: str
) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert 1 <= len(lines) <= 2, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert str(named_file) in lines[0], proc.stderr
    assert key in lines[0].removeprefix(f"error: {named_file}"), proc.stderr
    if len(lines) == 2:
        assert lines[1].startswith("hint: ") and len(lines[1]) > len("hint: "), proc.stderr
    else:  # no hint: the message itself must state the rule to follow
        assert any(w in lines[0] for w in (" must ", " needs ")), proc.stderr


def test_corpus_is_large_and_every_file_declares_its_key() -> None:
    assert len(CONFIGS) + len(LOCKS) >= 30
    for path in (*CONFIGS, *LOCKS):
        assert expectation(path)


def test_lock_corpus_base_is_valid() -> None:
    """Each corrupt lock is a one-defect variant of this one, which loads fine."""
    lock = loads(VALID_LOCK.read_text(), VALID_LOCK)
    assert [(t.name, t.tag, len(t.platforms)) for t in lock.tags] == [("team/app", "v1", 1)]


@pytest.mark.parametrize("source", CONFIGS, ids=lambda p: p.stem)
def test_bad_config(source: Path, tmp_path: Path) -> None:
    config = tmp_path / source.name
    shutil.copyfile(source, config)
    before = snapshot(tmp_path)
    proc = run_cli(tmp_path, "-c", str(config), "lock")
    assert_one_line_error(proc, config, expectation(source))
    assert snapshot(tmp_path) == before  # no lock, no tree, no temp files


def copy_lock_case(source: Path, tmp_path: Path) -> tuple[Path, Path]:
    config, lock = tmp_path / "registrish.toml", tmp_path / "registrish.lock"
    shutil.copyfile(VALID_CONFIG, config)
    shutil.copyfile(source, lock)
    return config, lock


@pytest.mark.parametrize("source", LOCKS, ids=lambda p: p.stem)
def test_bad_lock(source: Path, tmp_path: Path) -> None:
    config, lock = copy_lock_case(source, tmp_path)
    before = snapshot(tmp_path)
    proc = run_cli(tmp_path, "-c", str(config), "sync", "--frozen")
    assert_one_line_error(proc, lock, expectation(source))
    assert snapshot(tmp_path) == before  # the lock untouched, no tree


@pytest.mark.parametrize("command", [("lock", "--check"), ("lock",)])
@pytest.mark.parametrize("source", LOCKS, ids=lambda p: p.stem)
def test_bad_lock_in_process(
    source: Path, command: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same corpus through ``cli.main`` for the commands a subprocess would only
    repeat: ``lock`` must refuse a corrupt old lock before it contacts any registry."""
    config, lock = copy_lock_case(source, tmp_path)
    before = snapshot(tmp_path)
    code = main(["-c", str(config), *command])
    out, err = capsys.readouterr()
    assert_one_line_error(
        subprocess.CompletedProcess([], code, out, err), lock, expectation(source)
    )
    assert snapshot(tmp_path) == before


def test_missing_config_and_missing_lock(tmp_path: Path) -> None:
    config = tmp_path / "registrish.toml"
    proc = run_cli(tmp_path, "-c", str(config), "lock")
    assert_one_line_error(proc, config, "no such file")
    shutil.copyfile(VALID_CONFIG, config)
    proc = run_cli(tmp_path, "-c", str(config), "sync")
    assert_one_line_error(proc, tmp_path / "registrish.lock", "no such file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registrish.toml"]
