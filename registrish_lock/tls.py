"""HTTPS for the generated server configs (`[registry] server_name`, `tls_certificate`,
`tls_key`, `redirect_http`) and certificate verification for `registrish check`.

The config keys are validated when the config loads (types, pairing, characters the
server configs would read as syntax); the files themselves only by the commands that
write host configs (`sync`, before it fetches anything, and `hosts`), since `serve`,
`check` and `gc` never need them.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, UpstreamError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .lock.tomlreader import Reader

TLS_KEYS = ("server_name", "tls_certificate", "tls_key", "redirect_http")
#: A DNS name (labels of letters, digits and inner hyphens) or an IPv4 address.
_SERVER_NAME_RE = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
#: TLS 1.2's AEAD suites with forward secrecy (Mozilla's "intermediate" list without DHE,
#: which needs dhparams); TLS 1.3's suites are all strong and set apart by OpenSSL.
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ServerTls:
    """How the generated nginx, Caddy and Apache configs serve HTTPS. Everything unset:
    plain HTTP, as before."""

    #: The name clients pull from (`server_name`, Caddy's site address, `ServerName`).
    server_name: str | None = None
    certificate: Path | None = None  # absolute
    key: Path | None = None  # absolute
    #: A plain-HTTP listener that redirects every request to the HTTPS one.
    redirect_http: Address | None = None

    @property
    def own_certificate(self) -> bool:
        return self.certificate is not None

    @property
    def caddy_automatic(self) -> bool:
        """A name and no certificate: Caddy gets one itself (nginx and Apache stay HTTP)."""
        return self.server_name is not None and self.certificate is None


def parse_server_tls(
    r: Reader,
    registry: Mapping[str, Any],
    base: Path,
    parse_address: Callable[[str, str], Address],
    unsafe: frozenset[str],
) -> ServerTls:
    """The TLS keys of `[registry]`; `parse_address(text, key)` reads a HOST:PORT and
    `unsafe` lists the characters no path a server config quotes may hold."""
    name = None
    if "server_name" in registry:
        name = r.string(registry["server_name"], "registry.server_name")
        if not _SERVER_NAME_RE.fullmatch(name):
            raise r.fail(
                "registry.server_name",
                f"invalid host name {name!r}",
                'write the bare name clients pull from, e.g. "registry.example.com" '
                "(no scheme, port or path)",
            )
    paths: dict[str, Path] = {}
    for key in ("tls_certificate", "tls_key"):
        if key in registry:
            path = Path(os.path.abspath(base / r.string(registry[key], f"registry.{key}")))
            bad = sorted({c for c in str(path) if c in unsafe or ord(c) < 32})
            if bad:
                raise r.fail(
                    f"registry.{key}",
                    f"the path {str(path)!r} holds {' '.join(map(repr, bad))}, which the "
                    "nginx, Caddy and Apache configs would read as syntax",
                    "move the file to a path without quotes, backslashes, $, { or }",
                )
            paths[key] = path
    if len(paths) == 1:
        (given,) = paths
        missing = "tls_key" if given == "tls_certificate" else "tls_certificate"
        raise r.fail(
            f"registry.{missing}",
            f"is required with registry.{given}",
            "give both the certificate chain and its private key (PEM files)",
        )
    redirect = None
    if "redirect_http" in registry:
        redirect = parse_address(
            r.string(registry["redirect_http"], "registry.redirect_http"), "registry.redirect_http"
        )
        if not paths and name is None:
            raise r.fail(
                "registry.redirect_http",
                "redirects to HTTPS, but nothing serves HTTPS",
                "set registry.tls_certificate and registry.tls_key (or, for Caddy, "
                "registry.server_name), or remove redirect_http",
            )
    return ServerTls(
        server_name=name,
        certificate=paths.get("tls_certificate"),
        key=paths.get("tls_key"),
        redirect_http=redirect,
    )


def check_tls_files(config_path: Path, tls: ServerTls) -> None:
    """Before host configs that name them are written: the certificate and key load and
    match, and the key is private. Raises ConfigError naming the key and the fix."""
    if tls.certificate is None or tls.key is None:
        return
    for key, path in (("tls_certificate", tls.certificate), ("tls_key", tls.key)):
        if not path.is_file():
            raise ConfigError(
                config_path,
                f"registry.{key}",
                f"no such file {str(path)!r}",
                hint="paths are relative to the config file; give a PEM file",
            )
        if not os.access(path, os.R_OK):
            raise ConfigError(
                config_path,
                f"registry.{key}",
                f"{str(path)!r} is not readable by this user",
                hint="registrish checks the files it names; the server's user must read "
                "them too (nginx and Apache read them as root at start, Caddy as its own user)",
            )
    mode = stat.S_IMODE(tls.key.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            config_path,
            "registry.tls_key",
            f"{str(tls.key)!r} is readable or writable by others (mode {mode:04o})",
            hint=f"chmod 600 {tls.key}, owned by the user the server reads it as "
            "(root for nginx and Apache, the caddy user for Caddy)",
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.certificate, tls.key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(
            config_path,
            "registry.tls_key",
            f"{str(tls.key)!r} is encrypted: the servers cannot start without a passphrase",
            hint=f"decrypt it: openssl pkey -in {tls.key} -out KEY.pem (then chmod 600)",
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(
            config_path,
            "registry.tls_certificate",
            f"{str(tls.certificate)!r} and {str(tls.key)!r} do not load as a certificate "
            f"chain and its key: {exc.reason or exc}",
            hint="give the PEM certificate (leaf first, then intermediates) and the PEM "
            "private key it was issued for",
        ) from None


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    raise _EncryptedKey


# -- the client side: `registrish check https://…` -----------------------------------------
def client_context() -> ssl.SSLContext:
    """Verifies against the system's CAs, or the bundle `SSL_CERT_FILE` (and directory
    `SSL_CERT_DIR`) names: OpenSSL's default paths, which honour both variables."""
    return ssl.create_default_context()


def certificate_problem(url: str, exc: BaseException) -> CertificateError | None:
    """One plain error for a TLS verification failure found in `exc`'s chain, else None."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, ssl.SSLCertVerificationError):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    detail = seen.verify_message or str(seen)
    if seen.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH
        return CertificateError(
            f"{url}: the TLS certificate does not match the host ({detail})",
            hint="use the name the certificate was issued for, or issue one that lists "
            "this host in its subjectAltName",
        )
    return CertificateError(
        f"{url}: the TLS certificate is not trusted ({detail})",
        hint="add the CA that issued it to the system's trust store, or point "
        "SSL_CERT_FILE at a PEM bundle that holds it",
    )


class CertificateError(UpstreamError):
    """The deployment's certificate failed verification (exit 3, like no answer at all)."""
