"""`registrish lock` end to end against the real docker-registry test upstream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testbed.images import MANY_TAGS, SeededUpstream
from testbed.upstream import CountingProxy

from registrish_lock.cli import main
from registrish_lock.lock.lockfile import read_lock

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, host: str) -> Path:
    path = tmp_path / "registrish.toml"
    path.write_text(
        f"""
[[image]]
source = "{host}/app-oci"
tags = ["v1"]

[[image]]
source = "{host}/app-docker"
tags = ["v1"]

[[image]]
source = "{host}/multi"
tags = ["v1"]

[[image]]
source = "{host}/multi-docker"
tags = ["v1"]
platforms = ["linux/arm64"]

[[image]]
source = "{host}/team/tools/app"
tags = ["v1"]

[[image]]
source = "{host}/many"
versions = ">=3.19,<5"
latest = 3

[registries."{host}"]
insecure = true
"""
    )
    return path


def test_lock_pins_every_kind_to_upstream_digests(
    tmp_path: Path, seeded_upstream: SeededUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, seeded_upstream.host)
    assert main(["-c", str(config), "lock"]) == 0
    lock = read_lock(tmp_path / "registrish.lock")
    got = {f"{t.name}:{t.tag}": t for t in lock.tags}
    for key in ("app-oci:v1", "app-docker:v1", "multi:v1", "multi-docker:v1", "team/tools/app:v1"):
        pushed = seeded_upstream[key]
        assert got[key].digest == pushed.digest, key
        assert got[key].media_type == pushed.media_type, key
        assert got[key].size == pushed.size, key
        assert got[key].total_size > got[key].size, key
    assert {p.platform: p.digest for p in got["multi:v1"].platforms} == dict(
        seeded_upstream["multi:v1"].platforms
    )
    only_arm = got["multi-docker:v1"].platforms
    assert [(p.platform, p.digest) for p in only_arm] == [
        ("linux/arm64", seeded_upstream["multi-docker:v1"].platforms["linux/arm64"])
    ]
    # versions ">=3.19,<5", newest 3 of: 3.19 3.20 3.20.1 v4.0 4.1.0 (3.21-alpine, 1.0rc1 excluded)
    assert "3.21-alpine" in MANY_TAGS
    assert sorted(t.tag for t in lock.tags if t.name == "many") == ["3.20.1", "4.1.0", "v4.0"]
    assert "wrote" in capsys.readouterr().out


def test_relock_is_free_and_upgrade_is_one_head_per_tag(
    tmp_path: Path, seeded_upstream: SeededUpstream, counting_proxy: CountingProxy
) -> None:
    host = counting_proxy.url.removeprefix("http://")
    config = write_config(tmp_path, host)
    assert main(["-q", "-c", str(config), "lock"]) == 0
    lock_file = tmp_path / "registrish.lock"
    before = lock_file.read_bytes()
    mtime = lock_file.stat().st_mtime_ns
    counting_proxy.reset()
    assert main(["-q", "-c", str(config), "lock"]) == 0
    assert counting_proxy.requests == []
    assert lock_file.stat().st_mtime_ns == mtime

    counting_proxy.reset()
    assert main(["-q", "-c", str(config), "lock", "--upgrade"]) == 0
    tags = len(read_lock(lock_file).tags)
    manifest_gets = counting_proxy.count("GET", "/manifests/")
    heads = counting_proxy.count("HEAD", "/manifests/")
    listings = counting_proxy.count("GET", "/tags/list")
    assert (heads, manifest_gets, listings) == (tags, 0, 1)
    assert lock_file.read_bytes() == before
    assert lock_file.stat().st_mtime_ns == mtime


def test_check_and_dry_run(
    tmp_path: Path, seeded_upstream: SeededUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, seeded_upstream.host)
    assert main(["-c", str(config), "lock", "--check"]) == 1  # no lock yet
    assert main(["-c", str(config), "lock", "--dry-run"]) == 1
    assert not (tmp_path / "registrish.lock").exists()
    assert main(["-c", str(config), "lock"]) == 0
    assert main(["-c", str(config), "lock", "--check"]) == 0
    config.write_text(config.read_text().replace("latest = 3", "latest = 2"))
    capsys.readouterr()
    assert main(["-c", str(config), "lock", "--check"]) == 1
    err = capsys.readouterr().err
    assert "is stale" in err and "hint: run `registrish lock`" in err
    assert main(["--json", "-c", str(config), "lock", "--check"]) == 1
    assert json.loads(capsys.readouterr().out)["stale"] is True  # scripts read stdout
    assert main(["--json", "-c", str(config), "lock"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed"] == 1 and report["written"] is True


@pytest.mark.parametrize("command", ["lock", "sync", "outdated", "publish"])
def test_jobs_must_be_at_least_one(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["s3://bucket"] if command == "publish" else []
    with pytest.raises(SystemExit) as info:
        main(["-c", str(tmp_path / "registrish.toml"), command, *extra, "--jobs", "0"])
    assert info.value.code == 2
    assert "--jobs: must be at least 1, not 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "code", "needle"),
    [
        (lambda t, h: t.replace('tags = ["v1"]', 'tags = ["nope"]', 1), 3, "nope"),
        (lambda t, h: t.replace(h, "127.0.0.1:1"), 3, "cannot reach registry 127.0.0.1:1"),
        (lambda t, h: t.replace("latest = 3", "latest = 'x'"), 2, "image[5].latest"),
    ],
)
def test_errors_are_one_line_with_exit_codes(
    tmp_path: Path,
    seeded_upstream: SeededUpstream,
    capsys: pytest.CaptureFixture[str],
    edit: object,
    code: int,
    needle: str,
) -> None:
    config = write_config(tmp_path, seeded_upstream.host)
    assert callable(edit)
    config.write_text(edit(config.read_text(), seeded_upstream.host))
    assert main(["-c", str(config), "lock"]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err.splitlines()[0]
    assert "Traceback" not in err
    assert not (tmp_path / "registrish.lock").exists()
