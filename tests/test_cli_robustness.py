"""Robustness of the command line and of `registrish serve` as real processes: --debug keeps
the documented exit codes, serve closes idle / half-sent / stalled connections and bounds
its threads, bad --port/--host/URL/endpoint/profile input are usage errors, and the
access log stays one line per request under concurrent load."""

from __future__ import annotations

import contextlib
import hashlib
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.trees import BuiltTree, build_tree
from testbed.procs import LOOPBACK, Server, free_port, threads, wait_until
from testbed.s3 import require_boto3

from registrish_lock.lock.lockfile import write_lock
from registrish_lock.serving.routes import PING_DOCUMENT

REGISTRISH = [sys.executable, "-m", "registrish_lock"]


@pytest.fixture
def tree(tmp_path: Path) -> BuiltTree:
    return build_tree(tmp_path / "tree")


@pytest.fixture
def config(tree: BuiltTree, tmp_path: Path) -> Path:
    """A config whose [registry].root is `tree`, with the tree's lock beside it."""
    path = tmp_path / "registrish.toml"
    path.write_text('[registry]\nroot = "tree"\n')
    write_lock(path.with_suffix(".lock"), tree.lock)
    return path


def registrish(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*REGISTRISH, *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int) -> None:
    """Exit `code`, no traceback, one `error:` line (and at most one `hint:`)."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert sum(line.startswith("hint:") for line in lines) <= 1, result.stderr


@contextlib.contextmanager
def serving(
    root: Path, log_dir: Path, *extra: str, host: str = LOOPBACK, quiet: bool = False
) -> Iterator[tuple[Server, int]]:
    """`registrish serve` as a process on a free port, answering /v2/; stopped by PID."""
    port = free_port()
    argv = [*REGISTRISH, "serve", "-c", str(log_dir / "none.toml"), "--root", str(root)]
    argv += ["--host", host, "--port", str(port), *extra, *(["-q"] if quiet else [])]
    server = Server(f"serve-{port}", argv, log_dir=log_dir)
    server.start()
    try:
        if ":" in host:  # the testbed's readiness probe speaks IPv4 loopback only

            def ready() -> bool:
                assert server.running, server.log_tail()
                try:
                    bare = host.strip("[]")
                    return httpx.get(f"http://[{bare}]:{port}/v2/").status_code == 200
                except httpx.TransportError:
                    return False

            assert wait_until(ready, timeout=30), server.log_tail()
        else:
            server.wait_http(f"http://{host}:{port}/v2/", status=200)
        yield server, port
    finally:
        server.stop()


def request(sock: socket.socket, path: str = "/v2/", *, close: bool = False) -> None:
    extra = "Connection: close\r\n" if close else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """Head and body of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "closed before the response head"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return head, body


def closed_by_server(sock: socket.socket, within: float = 10.0) -> bool:
    """True when the server closes `sock` (EOF or reset) within `within` seconds; any
    bytes still in flight are read and dropped."""
    sock.settimeout(within)
    try:
        while sock.recv(1 << 20):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def big_blob(tree: BuiltTree, size: int) -> tuple[str, bytes]:
    """A blob file of `size` bytes in the tree (serve does not hash what it sends)."""
    data = hashlib.sha256(b"seed").digest() * (size // 32)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    name = tree.lock.tags[0].name
    (tree.layout.repo_dir(name) / "blobs" / digest).write_bytes(data)
    return f"/v2/{name}/blobs/{digest}", data


# --- 1. --debug keeps exit codes and error lines ---------------------------------------------


def test_debug_prints_traceback_and_error_and_keeps_exit_code(tmp_path: Path) -> None:
    plain = registrish("serve", "-c", str(tmp_path / "none.toml"), "--root", str(tmp_path))
    debug = registrish(
        "--debug", "serve", "-c", str(tmp_path / "none.toml"), "--root", str(tmp_path)
    )
    assert plain.returncode == debug.returncode == 6  # local problem: no tree
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    for result in (plain, debug):
        assert "error: " in result.stderr and "no registry tree here" in result.stderr
        assert "hint: run `registrish sync` first" in result.stderr
    # the traceback comes first, the user-facing lines last
    assert debug.stderr.rstrip().splitlines()[-1].startswith("hint:")
    usage = registrish("check", "--debug", "-c", str(tmp_path / "none.toml"))
    assert usage.returncode == 2 and "Traceback" in usage.stderr and "error: " in usage.stderr


def test_debug_on_an_os_error_exits_6(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from registrish_lock.cli import main
    from registrish_lock.commands import check as check_cmd

    def denied(*_args: object) -> int:
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(check_cmd, "run", denied)
    assert main(["--debug", "check"]) == 6
    err = capsys.readouterr().err
    assert "Traceback" in err and f"error: Permission denied: {tmp_path / 'x'}" in err


# --- 2. serve: timeouts and bounded connections --------------------------------------------


def test_serve_closes_idle_connections_after_the_timeout(tree: BuiltTree, tmp_path: Path) -> None:
    with serving(tree.layout.root, tmp_path, "--timeout", "1") as (server, port):
        idle = [socket.create_connection((LOOPBACK, port)) for _ in range(40)]
        kept = socket.create_connection((LOOPBACK, port))
        request(kept)
        assert read_response(kept)[1] == PING_DOCUMENT  # a keep-alive connection, then idle
        # every connection has its thread while it is open ...
        assert wait_until(lambda: threads(server.pid) >= 41)
        try:
            # ... and the server closes each one after the timeout, freeing it
            assert all(closed_by_server(s) for s in [*idle, kept])
            assert wait_until(lambda: threads(server.pid) == 1), threads(server.pid)
        finally:
            for s in [*idle, kept]:
                s.close()
        # still serving
        assert httpx.get(f"http://{LOOPBACK}:{port}/v2/").status_code == 200
    log = server.log_path.read_text()
    assert "error" not in log, log  # closing an idle connection is routine


def test_serve_closes_a_slowloris_connection(tree: BuiltTree, tmp_path: Path) -> None:
    """Headers trickled faster than the timeout: only a deadline per request head ends it."""
    with serving(tree.layout.root, tmp_path, "--timeout", "1") as (server, port):
        with socket.create_connection((LOOPBACK, port)) as sock:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
            closed, started = False, time.monotonic()
            while not closed and time.monotonic() - started < 10:
                time.sleep(0.2)
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                    if select.select([sock], [], [], 0)[0]:
                        closed = sock.recv(4096) == b""
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            assert closed, "the server kept a connection whose request never ended"
        assert wait_until(lambda: threads(server.pid) == 1)
    assert "request incomplete after 1 s: connection closed" in server.log_path.read_text()


def test_serve_closes_a_stalled_blob_reader(tree: BuiltTree, tmp_path: Path) -> None:
    path, data = big_blob(tree, 32 << 20)  # far more than the socket buffers hold
    with serving(tree.layout.root, tmp_path, "--timeout", "1") as (server, port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            sock.connect((LOOPBACK, port))
            request(sock, path)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            # read nothing: the server's send waits, then gives up (and says so)
            gave_up = "the client read nothing for 1 s: connection closed"
            assert wait_until(lambda: gave_up in server.log_path.read_text()), server.log_tail()
            received = 0
            sock.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            assert received < len(data)  # cut off: it was closed, not completed
        assert wait_until(lambda: threads(server.pid) == 1)
    assert "the client read nothing for 1 s: connection closed" in server.log_path.read_text()


def test_serve_does_not_cut_a_slow_download_that_progresses(
    tree: BuiltTree, tmp_path: Path
) -> None:
    """The timeout bounds each wait for the client, not the whole response: a download
    that takes several timeouts but keeps reading completes intact."""
    path, data = big_blob(tree, 4 << 20)
    serve = serving(tree.layout.root, tmp_path, "--timeout", "1", quiet=True)
    with serve as (_server, port), socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.connect((LOOPBACK, port))
        request(sock, path)
        started, got = time.monotonic(), b""
        while b"\r\n\r\n" not in got:
            got += sock.recv(4096)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        while len(body) < len(data):
            chunk = sock.recv(128 << 10)
            assert chunk, f"closed after {len(body)} of {len(data)} bytes"
            body += chunk
            time.sleep(0.1)
        assert time.monotonic() - started > 2  # it really outlasted the timeout
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


def test_serve_bounds_concurrent_connections(tree: BuiltTree, tmp_path: Path) -> None:
    with serving(tree.layout.root, tmp_path, "--max-connections", "3") as (server, port):
        held = [socket.create_connection((LOOPBACK, port)) for _ in range(3)]
        waiting = [socket.create_connection((LOOPBACK, port)) for _ in range(20)]
        try:
            for s in held:  # served, then kept alive: each holds its slot
                request(s)
                assert read_response(s)[1] == PING_DOCUMENT
            for s in waiting:
                request(s, close=True)
            # a window to see them stay queued: no event marks a connection not served
            time.sleep(1)
            assert select.select(waiting, [], [], 0)[0] == []  # queued, not served
            assert threads(server.pid) <= 1 + 3
            for s in held:
                s.close()
            for s in waiting:  # served once slots are free
                s.settimeout(15)
                assert read_response(s)[1] == PING_DOCUMENT
        finally:
            for s in [*held, *waiting]:
                s.close()


# --- 3. --port and --host ----------------------------------------------------------------


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_serve_bad_port_is_a_usage_error(tmp_path: Path, port: str) -> None:
    result = registrish("serve", "-c", str(tmp_path / "none.toml"), "--port", port)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "argument --port:" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e10"])
def test_serve_bad_timeout_is_a_usage_error(tmp_path: Path, value: str) -> None:
    result = registrish("serve", "-c", str(tmp_path / "none.toml"), "--timeout", value)
    assert result.returncode == 2
    assert "argument --timeout:" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_serve_on_ipv6_loopback(tree: BuiltTree, tmp_path: Path, host: str) -> None:
    with serving(tree.layout.root, tmp_path, host=host) as (server, port):
        r = httpx.get(f"http://[::1]:{port}/v2/app-oci/manifests/v1")
        assert r.status_code == 200
    log = server.log_path.read_text()
    assert f"on http://[::1]:{port}/" in log and '::1 "GET /v2/app-oci/manifests/v1 ' in log


def test_serve_unknown_host_is_a_usage_error(tree: BuiltTree, tmp_path: Path) -> None:
    base = ["serve", "-c", str(tmp_path / "none.toml"), "--root", str(tree.layout.root)]
    result = registrish(*base, "--host", "no-such-host.invalid", "--port", "0")
    assert_one_line_error(result, 2)
    assert "--host no-such-host.invalid" in result.stderr
    # an address that is not this machine's: the hint is about --host, not --port
    result = registrish(*base, "--host", "192.0.2.1", "--port", "0")
    assert_one_line_error(result, 6)
    assert "hint: --host must be an address of this machine" in result.stderr


# --- 4. access log lines under concurrent load --------------------------------------------

LOG_LINE = re.compile(r'^127\.0\.0\.1 "(GET|HEAD) /v2/\S* HTTP/1\.1" \d{3} \d+$')


def test_serve_access_log_lines_do_not_interleave(tree: BuiltTree, tmp_path: Path) -> None:
    paths = ["/v2/", "/v2/app-oci/manifests/v1", "/v2/app-oci/tags/list", "/v2/nope/manifests/x"]
    per_thread, workers = 150, 8
    with serving(tree.layout.root, tmp_path) as (server, port):

        def work() -> None:
            with httpx.Client(base_url=f"http://{LOOPBACK}:{port}") as client:
                for i in range(per_thread):
                    client.get(paths[i % len(paths)])

        pool = [threading.Thread(target=work) for _ in range(workers)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    lines = server.log_path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("try: "))
    body = [line for line in lines[start + 1 :] if line != "stopped"]
    bad = [line for line in body if not LOG_LINE.match(line)]
    assert not bad, bad[:5]
    assert len(body) >= per_thread * workers


# --- 5. check URL -----------------------------------------------------------------------


def test_check_unreachable_host_is_one_error_exit_3(config: Path) -> None:
    url = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    result = registrish("check", "-c", str(config), url)
    assert_one_line_error(result, 3)
    assert "Connection refused" in result.stderr or "ConnectError" in result.stderr
    assert result.stdout == ""  # no table of one failure per object


@pytest.mark.parametrize(
    ("url", "wanted"),
    [
        ("127.0.0.1:4000", "hint: write it as https://127.0.0.1:4000"),
        ("localhost:4000", "hint: write it as https://localhost:4000"),
        ("ftp://x", "not ftp://"),
        ("http://[::1", "not a valid URL"),
        ("http://", "names no host"),
        ("http://127.0.0.1:4000/?q=1", "has a query or fragment"),
        ("http://127.0.0.1:4000/#top", "has a query or fragment"),
    ],
)
def test_check_bad_url_is_a_usage_error(config: Path, url: str, wanted: str) -> None:
    result = registrish("check", "-c", str(config), url)
    assert_one_line_error(result, 2)
    assert wanted in result.stderr and result.stdout == ""


def test_check_never_prints_the_password_of_a_url(
    tree: BuiltTree, config: Path, tmp_path: Path
) -> None:
    with serving(tree.layout.root, tmp_path, quiet=True) as (_server, port):
        result = registrish("check", "-c", str(config), f"http://user:s3cr3t-pw@{LOOPBACK}:{port}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"http://{LOOPBACK}:{port}" in result.stdout
    refused = registrish(
        "check", "-c", str(config), f"http://user:s3cr3t-pw@{LOOPBACK}:{free_port()}"
    )
    assert refused.returncode == 3
    for out in (result.stdout, result.stderr, refused.stdout, refused.stderr):
        assert "s3cr3t-pw" not in out


def test_check_against_a_real_serve_still_passes(
    tree: BuiltTree, config: Path, tmp_path: Path
) -> None:
    with serving(tree.layout.root, tmp_path, quiet=True) as (_server, port):
        result = registrish("check", "-c", str(config), f"http://{LOOPBACK}:{port}/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": ok" in result.stdout


# --- 6. publish: bad endpoint or profile is bad input ------------------------------------


def aws_env(tmp_path: Path) -> dict[str, str]:
    """No real credentials or ~/.aws are read; one profile, `known`, exists."""
    aws = tmp_path / "aws"
    aws.mkdir(exist_ok=True)
    (aws / "config").write_text("[profile known]\nregion = us-east-1\n")
    (aws / "credentials").write_text("[known]\naws_access_key_id = a\naws_secret_access_key = b\n")
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(aws / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.mark.parametrize(
    "endpoint", ["not-a-url", "localhost:9000", "ftp://x", "http://[::1", "http://h:port"]
)
def test_publish_bad_endpoint_url_is_a_usage_error(
    config: Path, tmp_path: Path, endpoint: str
) -> None:
    require_boto3()
    args = ["publish", "-c", str(config), "s3://bkt", "--endpoint-url", endpoint]
    result = registrish(*args, env=aws_env(tmp_path))
    assert_one_line_error(result, 2)
    assert f"--endpoint-url {endpoint}" in result.stderr


def test_publish_unknown_profile_is_a_usage_error(config: Path, tmp_path: Path) -> None:
    require_boto3()
    env = aws_env(tmp_path)
    result = registrish("publish", "-c", str(config), "s3://bkt", "--profile", "nope", env=env)
    assert_one_line_error(result, 2)
    assert "--profile nope: no such profile" in result.stderr
    result = registrish("publish", "-c", str(config), "s3://bkt", env={**env, "AWS_PROFILE": "zz"})
    assert_one_line_error(result, 2)
    assert "AWS_PROFILE=zz: no such profile" in result.stderr
