"""Registry credentials from where users already keep them — never from our config or lock.

Sources, first match wins:

1. ``REGISTRISH_AUTH_<HOST>=user:password`` (HOST uppercased, every other character ``_``);
2. the containers auth file named by ``REGISTRY_AUTH_FILE`` (podman/skopeo ``auth.json``);
3. ``$DOCKER_CONFIG/config.json`` else ``~/.docker/config.json``: ``credHelpers[host]``,
   then ``credsStore``, then ``auths[host]`` (``auth`` = base64 ``user:pass``, or
   ``identitytoken``).

Secrets live only in `Credential` objects whose ``repr`` redacts them; warnings about a
failing helper name the helper and the registry, never what it printed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RegistrishError
from ..oci.reference import DOCKER_HUB

#: The key Docker Hub's credentials live under in docker's config and helpers.
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
#: docker's convention: this username means "the secret is an identity (refresh) token".
IDENTITY_TOKEN_USER = "<token>"
_HELPER_TIMEOUT = 30.0

#: Runs ``docker-credential-<helper> get`` with the server URL on stdin; returns its output.
HelperRunner = Callable[[str, str], "subprocess.CompletedProcess[bytes]"]


@dataclass(frozen=True)
class Credential:
    """A username/password pair or an identity token, and where it came from."""

    username: str
    password: str = field(repr=False)
    #: An OAuth2 refresh token (docker's ``identitytoken``); used instead of the password.
    identity_token: str | None = field(default=None, repr=False)
    #: Human description of the source, safe to print ("env REGISTRISH_AUTH_GHCR_IO").
    source: str = ""

    def __repr__(self) -> str:
        kind = "identity_token" if self.identity_token else "password"
        return f"Credential(username={self.username!r}, {kind}='***', source={self.source!r})"

    __str__ = __repr__

    def basic_authorization(self) -> str:
        """The value of an ``Authorization: Basic …`` header."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def env_var_name(registry: str) -> str:
    """``ghcr.io`` → ``REGISTRISH_AUTH_GHCR_IO``; ``127.0.0.1:5000`` → ``…_127_0_0_1_5000``."""
    return "REGISTRISH_AUTH_" + re.sub(r"[^A-Za-z0-9]", "_", registry).upper()


def how_to_provide(registry: str) -> str:
    """The hint every "credentials needed" error ends with."""
    login = "docker login" if registry == DOCKER_HUB else f"docker login {registry}"
    return (
        f"run '{login}', or set {env_var_name(registry)}=user:password, "
        "or point REGISTRY_AUTH_FILE at a podman/skopeo auth.json"
    )


def normalize_host(key: str) -> str:
    """An ``auths``/helper key as a registry host: ``https://index.docker.io/v1/`` →
    ``docker.io``, ``https://ghcr.io`` → ``ghcr.io`` (docker's ConvertToHostname)."""
    host = key
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix) :]
            break
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def server_url(registry: str) -> str:
    """What a credential helper is asked for: docker's key for Docker Hub, else the host."""
    return DOCKER_HUB_KEY if registry == DOCKER_HUB else registry


def _run_helper(helper: str, url: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [f"docker-credential-{helper}", "get"],
        input=url.encode(),
        capture_output=True,
        timeout=_HELPER_TIMEOUT,
        check=False,
    )


class CredentialStore:
    """Looks credentials up per registry host; results (including "none") are cached."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        auth_files: Sequence[Path] = (),
        warn: Callable[[str], None] | None = None,
        run_helper: HelperRunner = _run_helper,
    ) -> None:
        self._environ = dict(environ or {})
        self._auth_files = tuple(auth_files)
        self._warn = warn or (lambda _message: None)
        self._run_helper = run_helper
        self._cache: dict[str, Credential | None] = {}
        self._lock = threading.Lock()
        self._docs: dict[Path, Mapping[str, Any]] = {}

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        warn: Callable[[str], None] | None = None,
        run_helper: HelperRunner = _run_helper,
    ) -> CredentialStore:
        env = dict(os.environ if environ is None else environ)
        files: list[Path] = []
        if env.get("REGISTRY_AUTH_FILE"):
            files.append(Path(env["REGISTRY_AUTH_FILE"]))
        if env.get("DOCKER_CONFIG"):
            files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
        else:
            home = env.get("HOME")
            base = Path(home) if home else Path.home()
            files.append(base / ".docker" / "config.json")
        return cls(environ=env, auth_files=files, warn=warn, run_helper=run_helper)

    @classmethod
    def empty(cls) -> CredentialStore:
        """A store that never has credentials (anonymous access only)."""
        return cls()

    def lookup(self, registry: str) -> Credential | None:
        host = normalize_host(registry)
        # One lookup at a time: a helper is asked once per host even from a thread pool.
        with self._lock:
            if host not in self._cache:
                self._cache[host] = self._find(host)
            return self._cache[host]

    # -- sources ------------------------------------------------------------------------------
    def _find(self, host: str) -> Credential | None:
        found = self._from_env(host)
        if found is not None:
            return found
        for path in self._auth_files:
            doc = self._read(path)
            if doc is None:
                continue
            found = self._from_config(host, doc, path)
            if found is not None:
                return found
        return None

    def _from_env(self, host: str) -> Credential | None:
        name = env_var_name(host)
        value = self._environ.get(name)
        if value is None:
            return None
        user, sep, password = value.partition(":")
        if not sep or not user:
            # The message names the variable but never echoes its value.
            raise RegistrishError(
                f"environment variable {name} is not of the form user:password",
                hint=f"export {name}='USER:PASSWORD' (or unset it to use docker's config)",
            )
        return Credential(username=user, password=password, source=f"env {name}")

    def _read(self, path: Path) -> Mapping[str, Any] | None:
        if path in self._docs:
            return self._docs[path]
        try:
            doc: Any = json.loads(path.read_bytes())
        except FileNotFoundError:
            doc = None
        except (OSError, ValueError) as exc:
            self._warn(f"ignoring credentials file {path}: {type(exc).__name__}")
            doc = None
        if doc is not None and not isinstance(doc, dict):
            self._warn(f"ignoring credentials file {path}: not a JSON object")
            doc = None
        self._docs[path] = doc
        result: Mapping[str, Any] | None = doc
        return result

    def _from_config(self, host: str, doc: Mapping[str, Any], path: Path) -> Credential | None:
        helpers = doc.get("credHelpers")
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if normalize_host(key) == host and isinstance(helper, str) and helper:
                    return self._from_helper(helper, host, key)
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            found = self._from_helper(store, host, server_url(host))
            if found is not None:
                return found
        auths = doc.get("auths")
        if isinstance(auths, dict):
            # An exact key beats a normalised one (docker also looks the exact key up first).
            keys = sorted(auths, key=lambda k: (k not in (host, server_url(host)), k))
            for key in keys:
                entry = auths[key]
                if normalize_host(key) == host and isinstance(entry, dict):
                    found = self._from_entry(entry, f"{path} auths[{key!r}]")
                    if found is not None:
                        return found
        return None

    def _from_entry(self, entry: Mapping[str, Any], source: str) -> Credential | None:
        token = entry.get("identitytoken")
        auth = entry.get("auth")
        user, password = "", ""
        if isinstance(auth, str) and auth:
            try:
                decoded = base64.b64decode(auth, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                self._warn(f"ignoring {source}: 'auth' is not base64 of user:password")
                return None
            user, sep, password = decoded.partition(":")
            if not sep:
                self._warn(f"ignoring {source}: 'auth' is not base64 of user:password")
                return None
        elif isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            user, password = entry["username"], entry["password"]
        if isinstance(token, str) and token:
            return Credential(username=user, password="", identity_token=token, source=source)
        if user:
            return Credential(username=user, password=password, source=source)
        return None

    def _from_helper(self, helper: str, host: str, url: str) -> Credential | None:
        what = f"credential helper docker-credential-{helper} for {host}"
        if not re.fullmatch(r"[A-Za-z0-9._-]+", helper):
            self._warn(f"ignoring {what}: invalid helper name")
            return None
        try:
            proc = self._run_helper(helper, url)
        except FileNotFoundError:
            self._warn(f"{what} is not installed; continuing without credentials")
            return None
        except (OSError, subprocess.SubprocessError) as exc:
            self._warn(f"{what} failed ({type(exc).__name__}); continuing without credentials")
            return None
        if proc.returncode != 0:
            # docker's protocol: "credentials not found" means no login, not a failure.
            if b"credentials not found" not in proc.stdout + proc.stderr:
                self._warn(f"{what} exited with {proc.returncode}; continuing without credentials")
            return None
        try:
            answer = json.loads(proc.stdout)
            username, secret = answer["Username"], answer["Secret"]
            if not isinstance(username, str) or not isinstance(secret, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._warn(f"{what} printed no valid answer; continuing without credentials")
            return None
        source = f"docker-credential-{helper}"
        if username == IDENTITY_TOKEN_USER:
            return Credential(username="", password="", identity_token=secret, source=source)
        if not username and not secret:
            return None
        return Credential(username=username, password=secret, source=source)
