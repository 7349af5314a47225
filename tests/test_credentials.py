"""Credential sources: env, REGISTRY_AUTH_FILE, docker config (auths, credHelpers,
credsStore) with a real ``docker-credential-test`` script on PATH."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from registrish_lock.errors import RegistrishError
from registrish_lock.upstream.credentials import (
    Credential,
    CredentialStore,
    env_var_name,
    normalize_host,
)

HELPER = """#!/bin/sh
# A fake docker credential helper: logs what it was asked, answers from a table.
read -r url
echo "$1 $url" >> "{log}"
case "$url" in
  ghcr.io) echo '{{"ServerURL":"ghcr.io","Username":"octo","Secret":"helper-secret"}}' ;;
  https://index.docker.io/v1/) echo '{{"ServerURL":"x","Username":"hubber","Secret":"hub-secret"}}' ;;
  token.test) echo '{{"ServerURL":"x","Username":"<token>","Secret":"refresh-xyz"}}' ;;
  broken.test) echo "boom: leaked-secret" >&2; exit 3 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def helper_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real `docker-credential-test` on PATH; returns its request log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    script = bindir / "docker-credential-test"
    script.write_text(HELPER.format(log=log))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def docker_config(tmp_path: Path, doc: dict[str, object]) -> dict[str, str]:
    (tmp_path / "docker").mkdir(exist_ok=True)
    (tmp_path / "docker" / "config.json").write_text(json.dumps(doc))
    return {"DOCKER_CONFIG": str(tmp_path / "docker")}


def test_env_var_names() -> None:
    assert env_var_name("ghcr.io") == "REGISTRISH_AUTH_GHCR_IO"
    assert env_var_name("127.0.0.1:5000") == "REGISTRISH_AUTH_127_0_0_1_5000"
    assert env_var_name("docker.io") == "REGISTRISH_AUTH_DOCKER_IO"


def test_normalize_host() -> None:
    assert normalize_host("https://index.docker.io/v1/") == "docker.io"
    assert normalize_host("registry-1.docker.io") == "docker.io"
    assert normalize_host("http://Reg.Example:5000/v2/") == "reg.example:5000"


def test_env_beats_files_and_password_may_contain_colons(tmp_path: Path) -> None:
    env = docker_config(tmp_path, {"auths": {"ghcr.io": {"auth": b64("file:pw")}}})
    env["REGISTRISH_AUTH_GHCR_IO"] = "envuser:pa:ss"
    cred = CredentialStore.from_environment(env).lookup("ghcr.io")
    assert cred is not None
    assert (cred.username, cred.password) == ("envuser", "pa:ss")
    assert cred.source == "env REGISTRISH_AUTH_GHCR_IO"


def test_malformed_env_var_names_itself_not_its_value() -> None:
    store = CredentialStore.from_environment({"REGISTRISH_AUTH_GHCR_IO": "justasecret"})
    with pytest.raises(RegistrishError) as info:
        store.lookup("ghcr.io")
    assert "REGISTRISH_AUTH_GHCR_IO" in info.value.message
    assert "justasecret" not in info.value.message + (info.value.hint or "")


def test_registry_auth_file_then_docker_config(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {"quay.io": {"auth": b64("podman:pw1")}}}))
    env = docker_config(
        tmp_path,
        {
            "auths": {
                "quay.io": {"auth": b64("docker:pw2")},
                "https://index.docker.io/v1/": {"auth": b64("hub:pw3")},
                "https://reg.example:5000": {"auth": b64("ex:pw4")},
            }
        },
    )
    env["REGISTRY_AUTH_FILE"] = str(auth_file)
    store = CredentialStore.from_environment(env)
    quay = store.lookup("quay.io")
    hub = store.lookup("docker.io")
    ex = store.lookup("reg.example:5000")
    assert quay is not None and (quay.username, quay.password) == ("podman", "pw1")
    assert hub is not None and (hub.username, hub.password) == ("hub", "pw3")
    assert ex is not None and ex.username == "ex"
    assert store.lookup("other.example") is None


def test_home_docker_config_when_no_docker_config(tmp_path: Path) -> None:
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text(
        json.dumps({"auths": {"ghcr.io": {"auth": b64("me:pw")}}})
    )
    cred = CredentialStore.from_environment({"HOME": str(tmp_path)}).lookup("ghcr.io")
    assert cred is not None and cred.username == "me"


def test_cred_helpers_and_store_with_a_real_helper(tmp_path: Path, helper_env: Path) -> None:
    env = docker_config(
        tmp_path,
        {
            "credHelpers": {"ghcr.io": "test", "token.test": "test"},
            "credsStore": "test",
            "auths": {"ghcr.io": {}, "nothere.test": {"auth": b64("fallback:pw")}},
        },
    )
    store = CredentialStore.from_environment(env)
    ghcr = store.lookup("ghcr.io")
    assert ghcr is not None and (ghcr.username, ghcr.password) == ("octo", "helper-secret")
    assert ghcr.source == "docker-credential-test"
    hub = store.lookup("docker.io")  # credsStore, asked with docker's Hub key
    assert hub is not None and (hub.username, hub.password) == ("hubber", "hub-secret")
    token = store.lookup("token.test")
    assert token is not None and token.identity_token == "refresh-xyz" and token.username == ""
    # The store knows nothing about it: the auths entry still counts.
    fallback = store.lookup("nothere.test")
    assert fallback is not None and fallback.username == "fallback"
    store.lookup("ghcr.io")  # cached: the helper is not asked again
    asked = helper_env.read_text().splitlines()
    assert asked == [
        "get ghcr.io",
        "get https://index.docker.io/v1/",
        "get token.test",
        "get nothere.test",
    ]


@pytest.mark.usefixtures("helper_env")
def test_failing_or_missing_helper_warns_without_secrets(tmp_path: Path) -> None:
    env = docker_config(
        tmp_path, {"credHelpers": {"broken.test": "test", "gone.test": "nonexistent-xyz"}}
    )
    warnings: list[str] = []
    store = CredentialStore.from_environment(env, warn=warnings.append)
    assert store.lookup("broken.test") is None
    assert store.lookup("gone.test") is None
    assert len(warnings) == 2
    assert "docker-credential-test" in warnings[0] and "broken.test" in warnings[0]
    assert "leaked-secret" not in " ".join(warnings)
    assert "not installed" in warnings[1]


def test_credential_repr_redacts_secrets() -> None:
    cred = Credential(username="u", password="hunter2", source="env X")
    token = Credential(username="", password="", identity_token="tok-123", source="h")
    for text in (repr(cred), str(cred), repr(token), f"{[cred, token]}"):
        assert "hunter2" not in text and "tok-123" not in text
    assert "***" in repr(cred)
    assert cred.basic_authorization() == "Basic " + b64("u:hunter2")


def test_broken_config_file_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text("{not json")
    warnings: list[str] = []
    store = CredentialStore.from_environment(
        {"DOCKER_CONFIG": str(tmp_path / "docker")}, warn=warnings.append
    )
    assert store.lookup("ghcr.io") is None
    assert len(warnings) == 1 and "config.json" in warnings[0]
