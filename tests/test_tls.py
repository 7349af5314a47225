"""HTTPS settings: `[registry]` TLS keys, the certificate and key checks made before host
configs are written, the TLS parts of the nginx, Caddy and Apache configs, and how
`registrish check` verifies a deployment's certificate (bad configs: tests/bad_inputs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from testbed.procs import LOOPBACK, require_binary, run
from testbed.registrish import registrish
from testbed.tls import ServerCert, TestCA, issue, make_ca, serve_https

from registrish_lock.errors import ConfigError
from registrish_lock.lock.config import parse_config
from registrish_lock.lock.lockfile import Lock
from registrish_lock.serving.check import check_url
from registrish_lock.serving.hosts import make_context, render_hosts
from registrish_lock.serving.routes import Policy
from registrish_lock.tls import Address, CertificateError, ServerTls, check_tls_files
from registrish_lock.tree.layout import Layout

EMPTY_LOCK = Lock(config_hash="sha256:" + "0" * 64, tags=())
IMAGE = {"image": [{"source": "127.0.0.1:9/team/app", "tags": ["v1"]}]}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def pair(ca: TestCA, tmp_path: Path) -> ServerCert:
    return issue(ca, tmp_path / "tls")


def _config(tmp_path: Path, **registry: object) -> ServerTls:
    return parse_config({"registry": registry, **IMAGE}, tmp_path / "registrish.toml").tls


# -- config ---------------------------------------------------------------------------------
def test_paths_are_relative_to_the_config_and_everything_is_optional(tmp_path: Path) -> None:
    assert _config(tmp_path) == ServerTls()
    assert not ServerTls().own_certificate and not ServerTls().caddy_automatic
    tls = _config(
        tmp_path,
        server_name="registry.example.com",
        tls_certificate="tls/cert.pem",
        tls_key="tls/key.pem",
        redirect_http="0.0.0.0:80",
    )
    assert tls == ServerTls(
        "registry.example.com",
        tmp_path / "tls" / "cert.pem",
        tmp_path / "tls" / "key.pem",
        Address("0.0.0.0", 80),
    )
    assert tls.own_certificate and not tls.caddy_automatic
    auto = _config(tmp_path, server_name="registry.example.com")
    assert auto.caddy_automatic and not auto.own_certificate


# -- the files, checked when host configs are written ----------------------------------------
def _tls(pair: ServerCert) -> ServerTls:
    return ServerTls(certificate=pair.cert, key=pair.key)


def test_a_private_matching_pair_passes(pair: ServerCert, tmp_path: Path) -> None:
    check_tls_files(tmp_path / "registrish.toml", _tls(pair))
    pair.key.chmod(0o400)
    check_tls_files(tmp_path / "registrish.toml", _tls(pair))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_key_others_may_read_or_write_is_refused(
    pair: ServerCert, tmp_path: Path, mode: int
) -> None:
    pair.key.chmod(mode)
    with pytest.raises(ConfigError) as info:
        check_tls_files(tmp_path / "registrish.toml", _tls(pair))
    assert info.value.key == "registry.tls_key"
    assert f"readable or writable by others (mode {mode:04o})" in info.value.message
    assert info.value.hint is not None and f"chmod 600 {pair.key}" in info.value.hint


def test_an_unreadable_or_missing_file_is_refused(
    pair: ServerCert, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "registrish.toml"
    missing = ServerTls(certificate=tmp_path / "nope.pem", key=pair.key)
    with pytest.raises(ConfigError, match=r"registry\.tls_certificate: no such file"):
        check_tls_files(config, missing)
    # root reads every file: simulate a key this user may not read
    real_access = __import__("os").access
    monkeypatch.setattr(
        "registrish_lock.tls.os.access", lambda p, m: p != pair.key and real_access(p, m)
    )
    with pytest.raises(ConfigError) as info:
        check_tls_files(config, _tls(pair))
    assert info.value.key == "registry.tls_key"
    assert "not readable by this user" in info.value.message
    assert info.value.hint is not None and "the server's user must read" in info.value.hint


def test_a_key_of_another_certificate_is_refused(
    ca: TestCA, pair: ServerCert, tmp_path: Path
) -> None:
    other = issue(ca, tmp_path / "other")
    with pytest.raises(ConfigError) as info:
        check_tls_files(
            tmp_path / "registrish.toml", ServerTls(certificate=pair.cert, key=other.key)
        )
    assert "do not load as a certificate chain and its key" in info.value.message
    # a certificate file that holds no certificate
    with pytest.raises(ConfigError, match="do not load"):
        check_tls_files(tmp_path / "c.toml", ServerTls(certificate=pair.key, key=pair.key))


def test_an_encrypted_key_is_refused(pair: ServerCert, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    openssl = require_binary("openssl")
    run([openssl, "pkey", "-in", str(pair.key), "-aes256", "-passout", "pass:secret",
         "-out", str(encrypted)], what="openssl")  # fmt: skip
    encrypted.chmod(0o600)
    with pytest.raises(ConfigError, match="is encrypted"):
        check_tls_files(
            tmp_path / "registrish.toml", ServerTls(certificate=pair.cert, key=encrypted)
        )


@pytest.mark.parametrize("command", ["hosts", "sync"])
def test_hosts_and_sync_refuse_a_readable_key_in_one_line_and_write_nothing(
    pair: ServerCert, tmp_path: Path, command: str
) -> None:
    """`sync` before any download (its upstream, 127.0.0.1:9, would refuse)."""
    shutil.copyfile(
        Path(__file__).parent / "bad_inputs" / "lock" / "valid.lock.txt",
        tmp_path / "registrish.lock",
    )
    config = tmp_path / "registrish.toml"
    shutil.copyfile(Path(__file__).parent / "bad_inputs" / "lock" / "registrish.toml", config)
    with config.open("a") as f:
        f.write(
            f'\n[registry]\nhosts = ["caddy"]\ntls_certificate = "{pair.cert}"\ntls_key = "{pair.key}"\n'
        )
    pair.key.chmod(0o644)
    before = sorted(p.name for p in tmp_path.iterdir())
    frozen = ("--frozen",) if command == "sync" else ()  # this lock is not made from it
    proc = registrish(config, command, *frozen, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[1].startswith("hint: chmod 600")
    assert lines[0] == (
        f"error: {config}: registry.tls_key: '{pair.key}' is readable or writable by others "
        "(mode 0644)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no tree, no hosts dir


# -- the generated configs --------------------------------------------------------------------
def _render(host: str, tls: ServerTls, tmp_path: Path) -> tuple[str, tuple[str, ...]]:
    ctx = make_context(
        layout=Layout(tmp_path / "public"),
        hosts_dir=tmp_path / "hosts",
        listen_host=LOOPBACK,
        listen_port=8443,
        policy=Policy(),
        lock=EMPTY_LOCK,
        hosts=(host,),
        tls=tls,
    )
    (rendered,) = render_hosts(ctx, (host,))
    return rendered.outputs[0].data.decode(), rendered.warnings


OWN = ServerTls(
    "registry.example.com", Path("/etc/tls/c.pem"), Path("/etc/tls/k.pem"), Address("0.0.0.0", 80)
)


def test_nginx_serves_tls_1_2_and_up_with_http2_and_redirects(tmp_path: Path) -> None:
    text, warnings = _render("nginx", OWN, tmp_path)
    assert warnings == ()
    for line in (
        "listen 127.0.0.1:8443 ssl http2;",
        "server_name registry.example.com;",
        'ssl_certificate "/etc/tls/c.pem";',
        'ssl_certificate_key "/etc/tls/k.pem";',
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "listen 0.0.0.0:80;",
        "return 308 https://$host:8443$request_uri;",
    ):
        assert line in text, line
    assert "ssl_ciphers ECDHE-" in text and "CBC" not in text and "SHA:" not in text
    plain, _ = _render("nginx", ServerTls(), tmp_path)
    assert "ssl" not in plain and "listen 127.0.0.1:8443;" in plain


def test_caddy_with_our_certificate_and_automatic(tmp_path: Path) -> None:
    text, _ = _render("caddy", OWN, tmp_path)
    assert "https://registry.example.com:8443 {" in text
    assert '\ttls "/etc/tls/c.pem" "/etc/tls/k.pem"\n' in text
    assert "\tauto_https off\n" in text  # no ACME, no port 80 unless asked
    assert "http://0.0.0.0:80 {\n\tbind 0.0.0.0\n\tredir https://{host}:8443{uri} 308\n}" in text
    auto, _ = _render("caddy", ServerTls("registry.example.com"), tmp_path)
    assert "\nregistry.example.com:8443 {\n\tbind 127.0.0.1\n" in auto
    assert "auto_https" not in auto and "\ttls " not in auto
    assert "\tskip_install_trust\n" in auto
    redirected, _ = _render(
        "caddy", ServerTls("r.example", redirect_http=Address("::", 8080)), tmp_path
    )
    assert "\thttp_port 8080\n" in redirected


def test_apache_mod_ssl_vhost_and_redirect(tmp_path: Path) -> None:
    text, _ = _render("apache", OWN, tmp_path)
    for line in (
        "<VirtualHost 127.0.0.1:8443>\n    ServerName registry.example.com\n",
        "SSLEngine on",
        'SSLCertificateFile "/etc/tls/c.pem"',
        'SSLCertificateKeyFile "/etc/tls/k.pem"',
        "SSLProtocol -all +TLSv1.2 +TLSv1.3",
        "<VirtualHost 0.0.0.0:80>",
        "RewriteRule ^ https://%{SERVER_NAME}:8443%{REQUEST_URI} [R=308,L]",
    ):
        assert line in text, line


def test_a_name_without_a_certificate_warns_for_nginx_and_apache(tmp_path: Path) -> None:
    for host in ("nginx", "apache"):
        text, warnings = _render(host, ServerTls("registry.example.com"), tmp_path)
        assert "ssl" not in text.lower()  # no TLS directive at all
        assert len(warnings) == 1 and "serves plain HTTP" in warnings[0], host


# -- registrish check -------------------------------------------------------------------------
def test_check_names_a_certificate_for_another_host(ca: TestCA, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    other = issue(ca, tmp_path / "other", sans="DNS:registry.example.com")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
    with serve_https(other) as port, pytest.raises(CertificateError) as info:
        check_url(f"https://{LOOPBACK}:{port}", EMPTY_LOCK)
    assert info.value.message.startswith(
        f"https://{LOOPBACK}:{port}/v2/: the TLS certificate does not match the host ("
    )
    assert info.value.exit_code == 3


def test_check_trusts_ssl_cert_file_only_when_set(
    pair: ServerCert, ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with serve_https(pair) as port:
        url = f"https://{LOOPBACK}:{port}"
        with pytest.raises(CertificateError, match="the TLS certificate is not trusted"):
            check_url(url, EMPTY_LOCK)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert))
        assert check_url(url, EMPTY_LOCK).ok
