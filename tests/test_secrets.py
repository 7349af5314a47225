"""Secrets never leak: credentials given through a ``docker-credential-*`` helper, a docker
``config.json`` or ``REGISTRISH_AUTH_*`` reach a real htpasswd-protected docker-registry,
and then appear in no file of the project (lock, tree, host configs), no stdout/stderr at
any verbosity, no ``--json`` document. Also: TLS is verified unless a registry is marked
``insecure``."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from testbed.images import SeededUpstream
from testbed.procs import LOOPBACK
from testbed.tls import issue, make_ca, serve_https
from testbed.upstream import Registry, start_htpasswd_registry

from registrish_lock.console import Console
from registrish_lock.errors import UpstreamError
from registrish_lock.upstream.credentials import CredentialStore, env_var_name
from registrish_lock.upstream.ratelimit import RetryPolicy
from registrish_lock.upstream.registry import RegistryClient

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
USER = "alice"
#: Distinctive enough that any occurrence anywhere is a leak, never a coincidence.
PASSWORD = "pw-Zq7vX3kR9-do-not-leak"


def secret_forms(password: str) -> list[bytes]:
    """Every shape a leak could take: raw, Basic header payload, base64 of the password,
    URL-encoded, and JSON-escaped."""
    pair = f"{USER}:{password}"
    return [
        password.encode(),
        base64.b64encode(pair.encode()),
        base64.b64encode(password.encode()).rstrip(b"="),
        quote(password, safe="").encode(),
        json.dumps(password).encode()[1:-1],
    ]


@pytest.fixture
def private_registry(seeded_upstream: SeededUpstream, tmp_path: Path) -> Iterator[Registry]:
    reg = start_htpasswd_registry(
        tmp_path / "private", seeded_upstream.registry.root, user=USER, password=PASSWORD
    )
    try:
        yield reg
    finally:
        reg.server.stop()


@dataclass
class Setup:
    project: Path
    env: dict[str, str]
    #: Where the helper notes each call (the server URL only), to prove it was used.
    helper_log: Path | None = None


def write_project(project: Path, host: str) -> Path:
    project.mkdir()
    config = project / "registrish.toml"
    config.write_text(
        '[registry]\nroot = "public"\nhosts = ["nginx", "caddy", "apache", "netlify", "s3"]\n\n'
        f'[[image]]\nsource = "{host}/multi"\ntags = ["v1"]\n\n'
        f'[[image]]\nsource = "{host}/app-docker"\ntags = ["v1"]\n\n'
        f'[registries."{host}"]\ninsecure = true\n'
    )
    return config


def base_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REGISTRISH_AUTH_", "DOCKER_", "REGISTRY_AUTH"))
    }
    return {**env, "HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}


def setup_env_var(tmp: Path, host: str) -> Setup:
    env = base_env(tmp / "home")
    env[env_var_name(host)] = f"{USER}:{PASSWORD}"
    return Setup(tmp / "project", env)


def setup_helper(tmp: Path, host: str) -> Setup:
    """A fake ``docker-credential-vault`` on PATH, named by ``credHelpers`` in config.json."""
    bin_dir, docker = tmp / "secrets" / "bin", tmp / "secrets" / "docker"
    bin_dir.mkdir(parents=True)
    docker.mkdir(parents=True)
    log = tmp / "secrets" / "helper.log"
    helper = bin_dir / "docker-credential-vault"
    helper.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "url = sys.stdin.read().strip()\n"
        f"open({str(log)!r}, 'a').write(sys.argv[1] + ' ' + url + '\\n')\n"
        f"json.dump({{'ServerURL': url, 'Username': {USER!r}, 'Secret': {PASSWORD!r}}}, "
        "sys.stdout)\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    (docker / "config.json").write_text(json.dumps({"credHelpers": {host: "vault"}}))
    env = base_env(tmp / "home")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["DOCKER_CONFIG"] = str(docker)
    return Setup(tmp / "project", env, helper_log=log)


def setup_docker_config(tmp: Path, host: str) -> Setup:
    docker = tmp / "secrets" / "docker"
    docker.mkdir(parents=True)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    env = base_env(tmp / "home")
    env["DOCKER_CONFIG"] = str(docker)
    return Setup(tmp / "project", env)


SETUPS = {"env-var": setup_env_var, "helper": setup_helper, "docker-config": setup_docker_config}


def cli(setup: Setup, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "registrish_lock", *args],
        cwd=setup.project,
        env=setup.env,
        capture_output=True,
        timeout=180,
        check=False,
    )


def assert_no_secret(where: str, data: bytes, password: str = PASSWORD) -> None:
    for form in secret_forms(password):
        assert form not in data, f"secret ({form!r}) leaked into {where}"


@pytest.mark.parametrize("make", SETUPS.values(), ids=SETUPS)
def test_credentials_never_leak(
    make: Callable[[Path, str], Setup],
    private_registry: Registry,
    seeded_upstream: SeededUpstream,
    tmp_path: Path,
) -> None:
    host = private_registry.host
    setup: Setup = make(tmp_path, host)
    config = write_project(setup.project, host)
    runs = [
        ("lock", "-vv"),
        ("lock", "--upgrade", "--json", "-v"),
        ("lock", "--check", "--json"),
        ("sync", "-vv"),
        ("sync", "--verify", "--json", "-v"),
        ("sync", "--dry-run", "--json"),
        ("check", "--local", "--json", "-v"),
    ]
    for args in runs:
        proc = cli(setup, *args[:1], "-c", str(config), *args[1:])
        assert proc.returncode == 0, (args, proc.stderr.decode())
        assert b"Traceback" not in proc.stderr
        assert_no_secret(f"stdout of {args}", proc.stdout)
        assert_no_secret(f"stderr of {args}", proc.stderr)
        if "--json" in args:
            json.loads(proc.stdout)  # one JSON document, and it is clean (checked above)
        if "-vv" in args:  # the requests really were logged, with auth in play
            assert f"GET http://{host}/v2/".encode() in proc.stderr, proc.stderr.decode()

    # The runs really used the credentials: the registry refuses anonymous pulls.
    lock = (setup.project / "registrish.lock").read_text()
    assert seeded_upstream["multi:v1"].digest in lock
    files = [p for p in setup.project.rglob("*") if p.is_file()]
    assert len(files) > 20  # lock, tree, host configs
    for path in files:
        assert_no_secret(str(path), path.read_bytes())
    if setup.helper_log is not None:
        assert setup.helper_log.read_text().split()[:2] == ["get", host]


def test_refused_credentials_do_not_leak_either(
    private_registry: Registry, seeded_upstream: SeededUpstream, tmp_path: Path
) -> None:
    host = private_registry.host
    wrong = "wrong-Kx81-do-not-leak"
    setup = setup_env_var(tmp_path, host)
    setup.env[env_var_name(host)] = f"{USER}:{wrong}"
    config = write_project(setup.project, host)
    for extra in (("-vv",), ("--json",), ("--debug",)):
        proc = cli(setup, "lock", "-c", str(config), *extra)
        # exit 3 with one line; --debug prints the traceback first and keeps the code
        assert proc.returncode == 3, proc.stderr.decode()
        assert b"refused the credentials from env " + env_var_name(host).encode() in proc.stderr
        for password in (wrong, PASSWORD):
            assert_no_secret(f"stderr of lock {extra}", proc.stderr, password)
            assert_no_secret(f"stdout of lock {extra}", proc.stdout, password)
    assert sorted(p.name for p in setup.project.iterdir()) == ["registrish.toml"]


# -- TLS is verified unless a registry is marked insecure ------------------------------------
@pytest.fixture
def self_signed_tls(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 answering ``/v2/``, with a certificate from a CA
    nobody trusts."""
    with serve_https(issue(make_ca(tmp_path / "ca"), tmp_path / "tls")) as port:
        yield f"{LOOPBACK}:{port}"


def test_tls_certificates_are_verified(self_signed_tls: str) -> None:
    client = RegistryClient(
        credentials=CredentialStore(environ={}),
        console=Console(verbosity=-1, err=io.StringIO()),
        retry=RetryPolicy(attempts=1),
    )
    with client, pytest.raises(UpstreamError) as info:
        client.ping(self_signed_tls)
    assert info.value.message == (
        f"cannot reach registry {self_signed_tls}: TLS certificate verification failed"
    )


def test_plain_http_needs_insecure(seeded_upstream: SeededUpstream) -> None:
    """Without ``insecure = true`` registrish speaks HTTPS only: a plain-HTTP registry is
    an error that says how to opt in, never a silent downgrade."""
    client = RegistryClient(
        credentials=CredentialStore(environ={}),
        console=Console(verbosity=-1, err=io.StringIO()),
        retry=RetryPolicy(attempts=1),
    )
    with client, pytest.raises(UpstreamError) as info:
        client.ping(seeded_upstream.host)
    assert "TLS handshake failed" in info.value.message
    assert info.value.hint is not None and "insecure = true" in info.value.hint
