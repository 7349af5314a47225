"""Running the CLI in-process: a silent console, `main` with its captured output, the
one-error-line shape every failure must have, and a config for a real upstream."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from registrish_lock.cli import main
from registrish_lock.console import Console


def quiet() -> Console:
    return Console(verbosity=-1, out=io.StringIO(), err=io.StringIO())


def run_cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(code: int, err: str, allowed: tuple[int, ...] = (3, 4)) -> None:
    assert code in allowed, (code, err)
    assert "Traceback" not in err
    # Progress lines may come first; the failure itself is one error line (and a hint).
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, err
    tail = lines[errors[0] + 1 :]
    assert len(tail) <= 1 and all(x.startswith("hint: ") for x in tail), err


def write_config(
    tmp: Path, proxy_host: str, images: list[tuple[str, str, str]], *, platforms: str = ""
) -> Path:
    """images: (upstream repository, our name, tag)."""
    text = '[registry]\nroot = "public"\n\n'
    if platforms:
        text += f"[defaults]\nplatforms = {platforms}\n\n"
    for source, name, tag in images:
        text += (
            f'[[image]]\nsource = "{proxy_host}/{source}"\nname = "{name}"\ntags = ["{tag}"]\n\n'
        )
    text += f'[registries."{proxy_host}"]\ninsecure = true\n'
    config = tmp / "registrish.toml"
    config.write_text(text)
    return config
