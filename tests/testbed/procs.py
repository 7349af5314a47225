"""Process helpers: free ports, servers started and stopped by PID, required binaries.

Every server of the test bed binds 127.0.0.1 only, runs in its own process group (so a
server that forks, like Apache or dockerd, is stopped as a whole) and writes stdout and
stderr to a log file under the test's temporary directory. Failures quote the log's tail.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn

LOOPBACK = "127.0.0.1"
#: The only hosts test traffic may go to: loopback, plus the addresses of a network
#: namespace the harness created itself while it exists (see :func:`own_address`).
_OWN_HOSTS = {LOOPBACK, "localhost"}


def check_own_host(host: str) -> None:
    """Raise ``ValueError`` unless ``host`` is loopback or an address lent by :func:`own_address`."""
    if host not in _OWN_HOSTS:
        raise ValueError(f"test traffic goes to loopback only, not {host!r}")


@contextlib.contextmanager
def own_address(*hosts: str) -> Iterator[None]:
    """Allow requests to ``hosts`` (addresses of a veth pair the caller created) meanwhile."""
    added = [h for h in hosts if h not in _OWN_HOSTS]
    _OWN_HOSTS.update(added)
    try:
        yield
    finally:
        _OWN_HOSTS.difference_update(added)


class ServerError(RuntimeError):
    """A server did not start, or died while we waited for it."""


def in_ci() -> bool:
    """True when the environment says we run in CI (``CI=true``, ``CI=1``)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


class MissingComponent(RuntimeError):
    """A component the test bed needs is not installed (raised outside pytest)."""


def missing(message: str) -> NoReturn:
    """A required component is missing: ``pytest.fail`` in CI (a missing component is a
    broken CI image, never a reason to pass), ``pytest.skip`` elsewhere (a newcomer's
    laptop). Outside a pytest run (scripts/demo.py, which does not need pytest installed)
    :class:`MissingComponent`."""
    pytest = sys.modules.get("pytest")
    if pytest is None:
        raise MissingComponent(message)
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
    raise AssertionError("unreachable")  # pytest.skip raises


def require_binary(name: str) -> str:
    """Return the absolute path of the executable ``name``; see :func:`missing`."""
    path = shutil.which(name)
    if path is None:
        missing(f"required binary {name!r} not found on PATH (see .ci/run for the packages)")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def short_tmpdir(prefix: str) -> Path:
    """A fresh directory directly under /tmp, for paths with length limits.

    Unix sockets allow ~107 bytes and podman's ``--runroot`` at most 50 characters; pytest's
    ``tmp_path`` can be longer. The caller removes it (``shutil.rmtree``).
    """
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def threads(pid: int) -> int:
    """How many threads process ``pid`` runs now (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def wait_until(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s passed; whether it became true.
    For a state no event announces: a test never sleeps a fixed time in its place."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def http_status(
    url: str,
    *,
    timeout: float = 2.0,
    method: str = "GET",
    context: ssl.SSLContext | None = None,
) -> int:
    """The status code of one request to a loopback URL (raises ``OSError``): plain HTTP,
    or HTTPS verified with ``context``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or (scheme == "https") != (context is not None):
        raise ValueError(f"only http:// URLs, or https:// ones with a context: {url}")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    check_own_host(host)
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(host, int(port or 443), timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request(method, "/" + path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class Server:
    """A background process with a log file, stopped by PID.

    ``Server(name, argv, log_dir=...)`` only describes it; ``start()`` launches it in its own
    session (process group = its PID); ``wait_http``/``wait_unix``/``wait_tcp`` block until it
    is ready or raise :class:`ServerError` with the log tail; ``stop()`` sends SIGTERM to the
    group, then SIGKILL after ``timeout``. Usable as a context manager (start/stop).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        url: str | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_dir) / f"{name}.log"
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        #: Base URL (``http://127.0.0.1:PORT``) when the server speaks HTTP, for callers.
        self.url = url
        self._proc: subprocess.Popen[bytes] | None = None
        #: True once ``stop`` had to SIGKILL it (SIGTERM did not end it in time).
        self.killed = False

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServerError(f"{self.name} was never started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Server:
        if self._proc is not None:
            raise ServerError(f"{self.name} already started (pid {self._proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env} if self.env is not None else None
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=env,
                start_new_session=True,
            )
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate the process group; SIGKILL it when it is still up after ``timeout``
        (``killed`` then says so: a test that expects a clean stop checks it). Returns the
        exit code. Whatever happens, nothing it started is left running."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self._signal_group(signal.SIGKILL)
                proc.wait(timeout=timeout)
        # Children that outlived the leader (same group) get a last SIGKILL.
        self._signal_group(signal.SIGKILL)
        return proc.returncode

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself (a test sent it a signal); still up after
        ``timeout``, it is SIGKILLed (``killed`` then says so), never left running."""
        if self._proc is None:
            raise ServerError(f"{self.name} was never started")
        try:
            return self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            self._signal_group(signal.SIGKILL)
            return self._proc.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def __enter__(self) -> Server:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- readiness -------------------------------------------------------------------------
    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def fail(self, reason: str) -> ServerError:
        """A :class:`ServerError` naming the server, its PID, command and log tail."""
        pid = self._proc.pid if self._proc is not None else "-"
        return ServerError(
            f"{self.name} (pid {pid}): {reason}\n"
            f"command: {' '.join(self.argv)}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def _check_alive(self) -> None:
        if self._proc is None:
            raise ServerError(f"{self.name} was never started")
        code = self._proc.poll()
        if code is not None:
            raise self.fail(f"exited with code {code} before it was ready")

    def wait_http(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        status: int | Sequence[int] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> Server:
        """Wait until ``url`` answers (any status, or one of ``status`` when given);
        an https:// ``url`` is verified with ``context``."""
        wanted = {status} if isinstance(status, int) else set(status or ())
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            self._check_alive()
            try:
                code = http_status(url, timeout=1.0, context=context)
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if not wanted or code in wanted:
                    return self
                last = f"HTTP {code}"
            if time.monotonic() > deadline:
                self.stop()
                raise self.fail(f"{url} not ready after {timeout:.0f}s (last: {last})")
            time.sleep(0.05)

    def wait_unix(self, path: Path, *, timeout: float = 30.0) -> Server:
        """Wait until a unix socket at ``path`` accepts a connection."""
        deadline = time.monotonic() + timeout
        last = "missing"
        while True:
            self._check_alive()
            if Path(path).exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        sock.connect(str(path))
                    except OSError as exc:
                        last = f"{type(exc).__name__}: {exc}"
                    else:
                        return self
            if time.monotonic() > deadline:
                self.stop()
                raise self.fail(f"unix socket {path} not ready after {timeout:.0f}s ({last})")
            time.sleep(0.05)

    def wait_tcp(self, port: int, *, timeout: float = 30.0) -> Server:
        """Wait until 127.0.0.1:``port`` accepts a TCP connection."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                with socket.create_connection((LOOPBACK, port), timeout=1.0):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise self.fail(f"127.0.0.1:{port} not accepting after {timeout:.0f}s")
            time.sleep(0.05)


class ServerGroup:
    """Servers started by one test (or session); ``stop_all()`` stops them in reverse order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: list[Server] = []

    def add(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        errors: list[str] = []
        while self.servers:
            server = self.servers.pop()
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{server.name}: {exc}")
        if errors:
            raise ServerError("; ".join(errors))


def run(
    argv: Sequence[str],
    *,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; on failure raise ``CommandError`` with its stderr."""
    args = [str(a) for a in argv]
    full_env = {**os.environ, **env} if env is not None else None
    try:
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(what or args[0], args, None, "", f"timed out after {timeout}s") from exc
    if proc.returncode != 0:
        raise CommandError(what or args[0], args, proc.returncode, proc.stdout, proc.stderr)
    return proc


class CommandError(RuntimeError):
    """A client command failed; carries its exit code, stdout and stderr."""

    def __init__(
        self, what: str, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str
    ) -> None:
        self.what = what
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{what} failed (exit {returncode}): {' '.join(self.argv)}\n"
            f"--- stderr ---\n{stderr.strip()[-4000:]}\n"
            f"--- stdout ---\n{stdout.strip()[-2000:]}"
        )
