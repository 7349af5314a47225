"""`registrish outdated` against the real upstream: moved, new, gone, dropped, current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testbed.images import push_random_image
from testbed.upstream import CountingProxy, Registry

from registrish_lock.cli import main
from registrish_lock.lock.outdated import classify

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_classify_is_pure_and_complete() -> None:
    rows = classify(
        {"a": D1, "b": D1, "c": D1, "d": D1},
        {"a", "b", "d", "e"},
        {"a": D1, "b": D2, "c": D1, "d": None, "e": D2},
    )
    assert rows == [
        ("a", "current", D1, D1),
        ("b", "moved", D1, D2),
        ("c", "dropped", D1, D1),
        ("d", "gone", D1, None),
        ("e", "new", None, D2),
    ]


@pytest.mark.slow
def test_outdated_end_to_end(
    tmp_path: Path,
    upstream_registry: Registry,
    counting_proxy: CountingProxy,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "build"
    for tag, seed in (("1.0", 1), ("1.1", 2)):
        push_random_image(upstream_registry, "outdated/app", tag, seed=seed, workdir=work)
    host = counting_proxy.url.removeprefix("http://")
    config = tmp_path / "registrish.toml"
    config.write_text(
        f'[[image]]\nsource = "{host}/outdated/app"\nversions = ">=1.0"\n\n'
        f'[registries."{host}"]\ninsecure = true\n'
    )
    assert main(["-q", "-c", str(config), "lock"]) == 0
    assert main(["-c", str(config), "outdated"]) == 0
    capsys.readouterr()

    push_random_image(upstream_registry, "outdated/app", "1.1", seed=3, workdir=work)  # moves
    push_random_image(upstream_registry, "outdated/app", "1.2", seed=4, workdir=work)  # new
    counting_proxy.reset()
    assert main(["--json", "-c", str(config), "outdated"]) == 1
    report = json.loads(capsys.readouterr().out)
    states = {(r["tag"], r["state"]) for r in report["rows"]}
    assert states == {("1.0", "current"), ("1.1", "moved"), ("1.2", "new")}
    # only HEADs and one listing: outdated never GETs a manifest
    assert counting_proxy.count("GET", "/manifests/") == 0
    assert counting_proxy.count("HEAD", "/manifests/") == 3
    assert counting_proxy.count("GET", "/tags/list") == 1

    assert main(["-c", str(config), "outdated"]) == 1
    table = capsys.readouterr().out
    assert "outdated/app:1.1" in table and "moved" in table and "1.0" not in table

    assert main(["-q", "-c", str(config), "lock", "--upgrade"]) == 0
    assert main(["-c", str(config), "outdated"]) == 0
