"""Cloudflare Pages serves at most 100 `_headers` rules: `sync` refuses a lock that needs
more before it writes anything, so the old `_headers` never serves new tags untyped."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.hosts import context_for
from support.trees import BuiltTree, build_tree

from registrish_lock.cli import main
from registrish_lock.lock.config import load_config
from registrish_lock.lock.lockfile import LockedTag, make_lock, write_lock
from registrish_lock.oci import mediatypes
from registrish_lock.serving.hosts import RENDERERS
from registrish_lock.serving.hosts.netlify import (
    CLOUDFLARE_MAX_RULES,
    cloudflare_rule_count,
    parse_headers,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> BuiltTree:
    return build_tree(tmp_path_factory.mktemp("cf") / "public")


def test_the_count_from_the_lock_is_what_the_renderer_writes(
    tree: BuiltTree, tmp_path: Path
) -> None:
    rendered = RENDERERS["cloudflare"].render(context_for(tree, tmp_path, "cloudflare"))
    rules = parse_headers(rendered.outputs[0].data.decode())
    assert cloudflare_rule_count(tree.lock) == len(rules)


def test_sync_refuses_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "registrish.toml"
    config.write_text(
        '[registry]\nroot = "public"\nhosts = ["cloudflare"]\n\n'
        '[[image]]\nsource = "127.0.0.1:9/app"\nmatch = "^t"\n'
    )
    tags = [
        LockedTag(
            name="app",
            tag=f"t{i}",
            source="127.0.0.1:9/app",
            digest="sha256:" + f"{i:064x}",
            media_type=mediatypes.OCI_MANIFEST,
            size=100,
            total_size=1000,
        )
        for i in range(50)
    ]
    lock = make_lock(load_config(config).input_hash(), tags)
    assert cloudflare_rule_count(lock) > CLOUDFLARE_MAX_RULES
    write_lock(tmp_path / "registrish.lock", lock)
    # 127.0.0.1:9 answers nothing: refused before any request or write
    assert main(["-c", str(config), "sync"]) == 2
    err = capsys.readouterr().err
    assert "cloudflare: the locked images need at least 109 _headers rules" in err
    assert "nothing was synced" in err
    assert not (tmp_path / "public").exists()
