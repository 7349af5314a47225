"""Static web servers run from a config file the caller supplies (the project renders them).

Each ``start_*`` returns a ready :class:`~testbed.procs.Server` (stop it by PID with
``server.stop()``, or hand it to a ``ServerGroup``). ``port`` is the port the caller wrote into
the config; we only wait on it. The ``write_minimal_*`` helpers write the smallest config that
serves ``root`` on 127.0.0.1:``port`` — used by the test bed's own tests and handy as a
template for the generated configs.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
from collections.abc import Sequence
from pathlib import Path

from .procs import LOOPBACK, Server, require_binary, run

_APACHE_MODULES = Path("/usr/lib/apache2/modules")


def _ready_url(
    port: int, ready_path: str, context: ssl.SSLContext | None = None, host: str = LOOPBACK
) -> str:
    return f"{'https' if context else 'http'}://{host}:{port}{ready_path}"


def start_nginx(
    conf: Path,
    *,
    port: int,
    prefix: Path | None = None,
    log_dir: Path | None = None,
    ready_path: str = "/",
    timeout: float = 20.0,
    context: ssl.SSLContext | None = None,
    host: str = LOOPBACK,
) -> Server:
    """``nginx -p PREFIX -c CONF -e stderr -g 'daemon off;'``.

    Gotchas (nginx 1.22): the config must set its own ``pid``, ``error_log`` and every
    ``*_temp_path`` (client_body, proxy, fastcgi, uwsgi, scgi) under the tmp dir — the Debian
    build's defaults live under /var and /run. ``-e stderr`` keeps nginx from opening
    /var/log/nginx/error.log before it has read the config. When run as root the workers
    switch to ``nobody``, who cannot read pytest's 0700 tmp dirs: add ``user root;`` when
    ``os.geteuid() == 0``. Long URIs in a ``map`` need ``map_hash_bucket_size 256;``; quote
    regexes containing ``{64}``; an ``add_header`` inside a ``location`` cancels every
    server-level ``add_header``; to set ``Content-Type`` from a map use
    ``types {} default_type "";`` plus ``add_header Content-Type $var;``.
    """
    nginx = require_binary("nginx")
    prefix = prefix or conf.parent
    argv = [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
    server = Server("nginx", argv, log_dir=log_dir or conf.parent, url=f"http://{host}:{port}")
    server.start()
    return server.wait_http(
        _ready_url(port, ready_path, context, host), timeout=timeout, context=context
    )


def start_caddy(
    conf: Path,
    *,
    port: int,
    log_dir: Path | None = None,
    ready_path: str = "/",
    timeout: float = 20.0,
    context: ssl.SSLContext | None = None,
    host: str = LOOPBACK,
) -> Server:
    """``caddy run --config CONF --adapter caddyfile`` with its data/config dirs in the tmp dir.

    Gotchas (Caddy 2.6): a site address ``http://127.0.0.1:PORT`` still binds every interface —
    add ``bind 127.0.0.1``. The admin API defaults to localhost:2019, so two Caddys collide:
    put ``admin off``, ``admin 127.0.0.1:FREEPORT`` or (as registrish generates, so ``caddy
    reload`` works) ``admin unix/DIR/caddy-admin.sock`` in the global options block. An inline
    ``*.ext`` matcher inside ``header`` is silently read as a header name: use named
    matchers. ``file_server`` sends no Content-Type for unknown extensions. No
    ``persist_config`` in this version; ``XDG_DATA_HOME``/``XDG_CONFIG_HOME`` are pointed at
    the tmp dir so nothing lands in ``$HOME``.
    """
    caddy = require_binary("caddy")
    state = conf.parent / "caddy-state"
    env = {
        "XDG_DATA_HOME": str(state / "data"),
        "XDG_CONFIG_HOME": str(state / "config"),
        "HOME": str(state),
    }
    argv = [caddy, "run", "--config", str(conf), "--adapter", "caddyfile"]
    server = Server(
        "caddy", argv, log_dir=log_dir or conf.parent, env=env, url=f"http://{host}:{port}"
    )
    server.start()
    return server.wait_http(
        _ready_url(port, ready_path, context, host), timeout=timeout, context=context
    )


def start_apache(
    conf: Path,
    *,
    port: int,
    log_dir: Path | None = None,
    ready_path: str = "/",
    timeout: float = 20.0,
    context: ssl.SSLContext | None = None,
    host: str = LOOPBACK,
) -> Server:
    """``apache2 -f CONF -DFOREGROUND``.

    A standalone Debian config needs: ``ServerRoot``, ``PidFile``, ``DefaultRuntimeDir`` and
    ``Mutex file:DIR default`` under the tmp dir; ``ServerName`` (else AH00558 noise);
    ``Listen 127.0.0.1:PORT``; ``ErrorLog /dev/stderr``; ``TypesConfig /etc/mime.types``;
    ``LoadModule`` for mpm_event, authz_core, mime, dir and — as needed — rewrite, headers,
    alias (all in /usr/lib/apache2/modules). Do **not** ``LoadModule`` log_config, logio,
    unixd, version or watchdog: they are built in and loading them is a syntax error.
    As root without ``User``/``Group`` Apache logs AH02155 alerts ("getpwuid … uid
    4294967295") and its children stay root — harmless here; a real ``User`` must be able to
    read the tree (pytest's tmp dirs are 0700). ``-DFOREGROUND`` still forks workers: the
    server runs in its own process group and is stopped as a group.
    """
    apache2 = require_binary("apache2")
    argv = [apache2, "-f", str(conf), "-DFOREGROUND"]
    env = {"APACHE_RUN_DIR": str(conf.parent), "APACHE_LOG_DIR": str(conf.parent)}
    server = Server(
        "apache2", argv, log_dir=log_dir or conf.parent, env=env, url=f"http://{host}:{port}"
    )
    server.start()
    return server.wait_http(
        _ready_url(port, ready_path, context, host), timeout=timeout, context=context
    )


def start_python_http_server(
    root: Path, *, port: int, log_dir: Path, timeout: float = 20.0
) -> Server:
    """``python3 -m http.server --bind 127.0.0.1 PORT --directory ROOT``: the negative host.

    It serves extensionless manifests as ``application/octet-stream``: every client fails.
    """
    python = require_binary("python3")
    argv = [python, "-m", "http.server", "--bind", LOOPBACK, str(port), "--directory", str(root)]
    server = Server("python-http-server", argv, log_dir=log_dir, url=f"http://{LOOPBACK}:{port}")
    server.start()
    return server.wait_http(_ready_url(port, "/"), timeout=timeout)


# -- the project's generated configs, wrapped as the README says ---------------------------
GENERATED_HOSTS = ("nginx", "caddy", "apache")


def start_generated(
    host: str,
    hosts_dir: Path,
    tmp: Path,
    *,
    port: int,
    context: ssl.SSLContext | None = None,
    address: str = LOOPBACK,
    nginx_workers: int = 2,
) -> Server:
    """Start `host` ("nginx", "caddy" or "apache") on the configs `registrish` generated in
    `hosts_dir` (which name the tree and `address`:`port`), with the smallest wrapper the
    README asks for: nginx's `http {}` that includes `registrish.conf`, Apache's server
    config that includes the vhost and its `Listen` (and mod_ssl for HTTPS); the Caddyfile
    runs as is. With `context`, readiness is an HTTPS `/v2/` it verifies."""
    if host == "nginx":
        user = "user root;\n" if os.geteuid() == 0 else ""
        temps = "".join(
            f"    {t}_temp_path {tmp}/{t};\n"
            for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = tmp / "nginx.conf"
        conf.write_text(
            f"{user}worker_processes {nginx_workers};\npid {tmp}/nginx.pid;\n"
            f"error_log stderr warn;\nevents {{ worker_connections 256; }}\nhttp {{\n"
            f"    access_log off;\n{temps}    include {hosts_dir / 'registrish.conf'};\n}}\n"
        )
        return start_nginx(conf, port=port, ready_path="/v2/", context=context, host=address)
    if host == "caddy":
        return start_caddy(
            hosts_dir / "Caddyfile", port=port, ready_path="/v2/", context=context, host=address
        )
    if host != "apache":
        raise ValueError(f"not a generated host: {host!r}")
    conf = write_apache_server_config(
        tmp,
        f"Include {hosts_dir / 'registrish-apache-listen.conf'}\n"
        f"Include {hosts_dir / 'registrish-apache.conf'}\n",
        modules=("ssl", "socache_shmcb") if context is not None else (),
    )
    return start_apache(conf, port=port, ready_path="/v2/", context=context, host=address)


def write_apache_server_config(tmp: Path, body: str, *, modules: Sequence[str] = ()) -> Path:
    """`tmp/httpd.conf`: a standalone Apache (the gotchas in :func:`start_apache`) with the
    modules registrish's rules need and `modules`, then `body` (Listen, vhost includes, a
    DocumentRoot). mod_ssl keeps its session cache in socache_shmcb, set here as Debian's
    ssl.conf does."""
    needed = ["mpm_event", "authz_core", "mime", "dir", "rewrite", "headers", "setenvif"]
    needed += modules
    loads = "\n".join(f"LoadModule {m}_module {_APACHE_MODULES}/mod_{m}.so" for m in needed)
    if "socache_shmcb" in modules:
        loads += f"\nSSLSessionCache shmcb:{tmp}/ssl_scache(512000)"
    conf = tmp / "httpd.conf"
    conf.write_text(
        f'ServerRoot "{tmp}"\nServerName {LOOPBACK}\nPidFile "{tmp}/httpd.pid"\n'
        f'DefaultRuntimeDir "{tmp}"\nMutex file:{tmp} default\n{loads}\n'
        f"TypesConfig /etc/mime.types\nErrorLog /dev/stderr\nLogLevel warn\n{body}"
    )
    return conf


def reload_generated(host: str, server: Server, hosts_dir: Path) -> None:
    """Reload a host started by :func:`start_generated` as the README says to after a sync:
    nginx `-s reload` (SIGHUP to the master), Apache graceful (SIGUSR1 to the parent),
    `caddy reload` through the admin endpoint its Caddyfile names. Asynchronous for nginx
    and Apache: the caller polls for the new content."""
    if host == "nginx":
        os.kill(server.pid, signal.SIGHUP)
    elif host == "apache":
        os.kill(server.pid, signal.SIGUSR1)
    elif host == "caddy":
        caddyfile = hosts_dir / "Caddyfile"
        admin = re.search(r"^\s*admin\s+(\S+)", caddyfile.read_text(), re.MULTILINE)
        if admin is None or admin.group(1) == "off":
            raise ValueError(f"{caddyfile} has no admin endpoint: caddy cannot reload it")
        caddy = require_binary("caddy")
        argv = [caddy, "reload", "--config", str(caddyfile), "--adapter", "caddyfile"]
        run([*argv, "--address", admin.group(1)], what="caddy reload")
    else:
        raise ValueError(f"not a generated host: {host!r}")


# -- minimal configs (for the bed's own tests; templates for the renderers) ----------------
def write_minimal_nginx_config(tmp: Path, root: Path, port: int, host: str = LOOPBACK) -> Path:
    """A config serving ``root`` on ``host``:``port``; returns its path (prefix = ``tmp``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen {host}:{port};
        root {root};
    }}
}}
"""
    )
    return conf


def write_minimal_caddy_config(tmp: Path, root: Path, port: int, host: str = LOOPBACK) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "Caddyfile"
    conf.write_text(
        f"""{{
    admin off
    auto_https off
}}
http://{host}:{port} {{
    bind {host}
    root * {root}
    file_server
}}
"""
    )
    return conf


def write_minimal_apache_config(tmp: Path, root: Path, port: int, host: str = LOOPBACK) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    modules = ["mpm_event", "authz_core", "mime", "dir", "alias", "rewrite", "headers"]
    loads = "\n".join(f"LoadModule {m}_module {_APACHE_MODULES}/mod_{m}.so" for m in modules)
    conf = tmp / "httpd.conf"
    conf.write_text(
        f"""ServerRoot "{tmp}"
ServerName {LOOPBACK}
Listen {host}:{port}
PidFile "{tmp}/httpd.pid"
DefaultRuntimeDir "{tmp}"
Mutex file:{tmp} default
{loads}
TypesConfig /etc/mime.types
ErrorLog /dev/stderr
LogLevel warn
DocumentRoot "{root}"
<Directory "{root}">
    Require all granted
    Options None
    AllowOverride None
</Directory>
"""
    )
    return conf
