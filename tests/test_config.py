"""registrish.toml validation: every error names file, key path and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from registrish_lock.errors import ConfigError
from registrish_lock.lock.config import load_config
from registrish_lock.oci.manifest import Platform

GOOD = """
[registry]
root = "public"
hosts = ["nginx", "caddy"]
listen = "8080"

[defaults]
platforms = ["linux/amd64", "linux/arm64"]

[[image]]
source = "docker.io/library/alpine"
tags = ["3.20", "latest"]
versions = ">=3.18,<4"
latest = 2

[[image]]
source = "127.0.0.1:5000/team/tools/app"
match = '^v\\d+$'
platforms = ["linux/amd64"]

[registries."127.0.0.1:5000"]
insecure = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registrish.toml"
    path.write_text(text)
    return path


def test_good_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.root == tmp_path / "public"
    assert config.lock_path == tmp_path / "registrish.lock"
    assert config.listen_port == 8080
    alpine, app = config.images
    assert alpine.name == "alpine"
    assert alpine.tags == ("3.20", "latest")
    assert alpine.platforms == (Platform("linux", "amd64"), Platform("linux", "arm64"))
    assert app.name == "team/tools/app"
    assert app.platforms == (Platform("linux", "amd64"),)
    assert config.registry_settings("127.0.0.1:5000").insecure
    assert not config.registry_settings("docker.io").insecure


def test_input_hash_ignores_hosts_but_not_selectors(tmp_path: Path) -> None:
    base = load_config(write(tmp_path, GOOD)).input_hash()
    other_hosts = load_config(write(tmp_path, GOOD.replace('"nginx", "caddy"', '"apache"')))
    assert other_hosts.input_hash() == base
    other_range = load_config(write(tmp_path, GOOD.replace(">=3.18,<4", ">=3.19,<4")))
    assert other_range.input_hash() != base


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[registry\n", "invalid TOML"),
        ('[[image]]\nsource = "alpine"\ntag = ["1"]\n', "image[0].tag: unknown key"),
        ('[[image]]\nsource = "alpine"\nversion = ">=1"\n', "image[0].version: unknown key"),
        ('[[image]]\nsource = "alpine"\nversions = ">>1"\n', "image[0].versions: invalid PEP 440"),
        ('[[image]]\nsource = "alpine"\nmatch = "(["\n', "image[0].match: invalid regular"),
        ('[[image]]\nsource = "Alpine"\ntags = ["1"]\n', "image[0].source"),
        ('[[image]]\nsource = "alpine"\nname = "../x"\ntags = ["1"]\n', "image[0].name"),
        ('[[image]]\nsource = "alpine"\nname = "Team/App"\ntags = ["1"]\n', "image[0].name"),
        ('[[image]]\nsource = "alpine"\ntags = ["-bad"]\n', "image[0].tags[0]: invalid tag"),
        ('[[image]]\nsource = "alpine"\ntags = "1"\n', "image[0].tags: must be a list"),
        ('[[image]]\nsource = "alpine"\n', "image[0]: selects no tags"),
        ('[[image]]\ntags = ["1"]\n', "image[0].source: is required"),
        ('[[image]]\nsource = "alpine@sha256:' + "a" * 64 + '"\ntags=["1"]\n', "digest"),
        ('[[image]]\nsource = "alpine"\ntags = ["1"]\nlatest = 0\n', "image[0].latest"),
        ('[[image]]\nsource = "alpine"\ntags = ["1"]\nlatest = 2\n', "needs 'versions'"),
        ('[[image]]\nsource = "alpine"\ntags = ["1"]\nplatforms = ["linux"]\n', "platforms[0]"),
        (
            '[[image]]\nsource = "alpine"\ntags = ["1"]\n[[image]]\nsource = "x/alpine"\n'
            'name = "alpine"\ntags = ["1"]\n',
            "image[1].name: repository name 'alpine' is already used by image[0]",
        ),
        ('[registry]\nhosts = ["ngnix"]\n', "registry.hosts[0]: unknown host"),
        ('[registry]\nroots = "x"\n', "registry.roots: unknown key"),
        ('[registry]\nlisten = "x:y"\n', "registry.listen"),
        ('[registries."a b"]\ninsecure = true\n', "invalid registry host"),
        ('[registries."h:1"]\ninsecure = "yes"\n', 'registries."h:1".insecure'),
        ('[registries."h:1"]\nmirrors = ["m"]\n', "mirrors are supported for docker.io only"),
        ("image = 3\n", "image: must be an array"),
        ('[defaults]\nplatform = ["linux/amd64"]\n', "defaults.platform: unknown key"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert needle in message
    assert "\n" not in message


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, '[[image]]\nsource = "alpine"\nverisons = ">=1"\n'))
    assert info.value.hint == "did you mean 'versions'?"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "no such file" in str(info.value)
