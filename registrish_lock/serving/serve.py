"""`registrish serve`: the embedded HTTP server for a tree.

`resolver.TreeResolver.answer` is the whole behaviour (path → `Answer`), independent of
the socket; `RegistryHandler` only parses the request, sends the answer and logs one line.
Blobs are copied through a buffer per connection (measured faster than `os.sendfile` here).

A connection idle for `timeout`, or still sending a request head after it, is closed, and
so is one whose client takes no byte of a response for `timeout` (a slow download that
progresses is never cut): idle, half-sent (slowloris) and stalled connections free their
thread. At most `max_connections` are served at once; further ones wait in the listen queue.
"""

from __future__ import annotations

import email.utils
import errno
import fcntl
import io
import math
import os
import select
import selectors
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import LocalError, RegistrishError
from ..tree.layout import Layout

# The resolver's names are re-exported: callers and tests take them from here too.
from .resolver import Answer as Answer
from .resolver import TreeResolver as TreeResolver
from .resolver import parse_range as parse_range
from .routes import Policy
from .stopsignals import StopSignals

#: Seconds a connection may sit idle or take to send a request head, and a blocking
#: send may wait for the client to read (a slow download that progresses is never cut).
DEFAULT_TIMEOUT = 30.0
#: Connections served at once (one thread each); more wait in the kernel's listen queue.
DEFAULT_MAX_CONNECTIONS = 256
#: Bytes read from a blob per write (one buffer per connection, allocated on its first blob).
SEND_BUFFER = 128 * 1024
#: SIOCOUTQ, the ioctl for a socket's unsent bytes, is TIOCOUTQ's number on Linux.
_SIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None


class _RequestReader(io.RawIOBase):
    """The read side of a connection with a deadline for the whole request head: the
    socket's timeout alone lets a client trickle one header byte every few seconds and
    hold its thread forever (slowloris). The deadline is checked before each read, and a
    read waits at most the socket's timeout, so a request head gets at most twice the
    timeout (setting the socket's timeout before every read cost request rate)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = math.inf
        self.received = False  # any byte of the current request yet

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if time.monotonic() > self.deadline:
            raise TimeoutError("timed out")
        n = self._sock.recv_into(buffer)
        self.received = self.received or n > 0
        return n


class RegistryHandler(BaseHTTPRequestHandler):
    server: RegistryServer
    protocol_version = "HTTP/1.1"
    # A head and a body can be two writes: with Nagle on, delayed ACKs add ~40 ms
    # to every keep-alive response (measured on one manifest: 367 → ~2,200 req/s).
    disable_nagle_algorithm = True
    _reader: _RequestReader
    _responding = False
    _buffer: memoryview | None = None

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.timeout_seconds)  # bounds every blocking send
        self.rfile.close()  # the plain makefile() reader, replaced by one with a deadline
        self._reader = _RequestReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self._fd = self.connection.fileno()
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLOUT)

    def handle_one_request(self) -> None:
        # BaseHTTPRequestHandler closes the connection on a TimeoutError (read or write)
        # and reports it through log_error.
        self._reader.deadline = time.monotonic() + self.server.timeout_seconds
        self._reader.received = False
        self._responding = False
        super().handle_one_request()

    def version_string(self) -> str:
        return "registrish"

    def _serve(self) -> None:
        self._responding = True
        # The resolver reads one request header; lower-casing all of them cost time.
        wanted = self.headers.get("Range")
        answer = self.server.resolver.answer(
            self.command, self.path, {"range": wanted} if wanted is not None else {}
        )
        self.log_request(answer.status, answer.length)
        # The status line and headers are built here rather than through send_header(),
        # and go out in one write with a small body: two writes per manifest response
        # were a measurable share of serve's request rate (issue 6).
        phrase = self.responses.get(answer.status, ("",))[0]
        lines = [
            f"{self.protocol_version} {answer.status} {phrase}",
            "Server: registrish",
            f"Date: {self.server.http_date()}",
            *(f"{key}: {value}" for key, value in answer.headers),
            f"Content-Length: {answer.length}",
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command == "HEAD" or answer.length == 0:
            self._send(head)
        elif answer.file is None:
            self._send(head + answer.body)
        else:
            with answer.file.open("rb", buffering=0) as handle:
                self._send_file(head, handle.fileno(), answer.offset, answer.size)

    # Sends bypass the socket's timeout machinery (sendall's timeout is a deadline for the
    # whole body, socket.sendfile's one for each wait): the socket is non-blocking (it has
    # a timeout) and `_wait_writable` gives up only when the client took nothing at all.
    def _send(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                self._wait_writable()

    def _send_file(self, head: bytes, fd: int, offset: int, count: int) -> None:
        """`head`, then `count` bytes of the file `fd` from `offset`, read into one buffer
        per connection and written from it; the head goes out with the first chunk (a small
        blob is one write). A plain copy, not os.sendfile: on loopback and a veth pair it
        served blobs at least as fast (BENCHMARKS.md), as nginx did with sendfile off."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(SEND_BUFFER))
        view, filled = self._buffer, len(head)
        view[:filled] = head
        while count > 0:
            got = os.preadv(fd, [view[filled : filled + min(count, SEND_BUFFER - filled)]], offset)
            if got == 0:  # close: the client must not take a short body as the blob
                raise OSError(f"a blob ended {count} bytes before its Content-Length")
            self._send(view[: filled + got])
            offset += got
            count -= got
            filled = 0

    def _wait_writable(self) -> None:
        """Wait until the socket's send queue has room. A slow client that reads keeps
        the connection: the wait restarts as long as the queue shrank (Linux's SIOCOUTQ;
        the kernel reports room only once half the queue, up to megabytes, is gone)."""
        while True:
            queued = _unsent(self._fd)
            if self._poll.poll(self.server.timeout_seconds * 1000):
                return
            now = _unsent(self._fd)
            if queued is None or now is None or now >= queued:
                raise TimeoutError("timed out")

    do_GET = do_HEAD = _serve

    def __getattr__(self, name: str) -> Any:
        # Every other method (POST, PROPFIND, ...) is answered by the resolver's 405, not
        # http.server's 501 for a method without a do_ handler.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.server.access_log is not None:
            line = _printable(self.requestline)
            self.server.access_log(f'{self.client_address[0]} "{line}" {code} {size}')

    def log_error(self, format: str, *args: Any) -> None:
        if self.server.access_log is None:
            return
        if args and isinstance(args[0], TimeoutError):
            seconds = f"{self.server.timeout_seconds:g} s"
            if self._responding:
                message = f"the client read nothing for {seconds}: connection closed"
            elif self._reader.received:
                message = f"request incomplete after {seconds}: connection closed"
            else:
                return  # an idle keep-alive connection closed: routine, not an error
        else:
            message = _printable(format % args)
        self.server.access_log(f"{self.client_address[0]} error: {message}")


def _unsent(fd: int) -> int | None:
    """Bytes in a TCP socket's send queue, not yet acknowledged; None where unknown."""
    if _SIOCOUTQ is None:
        return None
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, _SIOCOUTQ, b"\0\0\0\0"))[0])
    except OSError:
        return None


def _printable(text: str) -> str:
    """Control and non-ASCII characters escaped: a request line is whatever a client sent
    (a TLS ClientHello probing a plain-HTTP port is binary) and must not reach a terminal."""
    if text.isascii() and text.isprintable():
        return text
    return text.encode("unicode_escape", "backslashreplace").decode("ascii").replace('"', '\\"')


class RegistryServer(ThreadingHTTPServer):
    daemon_threads = True
    # Many clients open several connections at once (docker pulls layers in parallel).
    request_queue_size = 128
    _date: tuple[int, str] = (0, "")

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread for the connection once fewer than `max_connections` are being
        served; until then the accept loop waits, and new clients queue in the kernel."""
        while not self._slots.acquire(timeout=0.2):
            if self._stopping or (self.stop_signals is not None and self.stop_signals.requested):
                self.shutdown_request(request)
                return
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread": no thread will release the slot
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        self._stopping = True
        super().shutdown()

    def http_date(self) -> str:
        """The Date header, formatted once a second rather than once a request."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]

    def handle_error(self, request: Any, client_address: tuple[str, int]) -> None:
        """A client that hangs up mid-response is routine (a cancelled pull, the end of a
        benchmark): no traceback. Anything else is one log line."""
        del request  # socketserver closes it
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            return
        if self.access_log is not None:
            self.access_log(f"{client_address[0]} error: {type(error).__name__}: {error}")

    def __init__(
        self,
        address: tuple[str, int],
        resolver: TreeResolver,
        access_log: Callable[[str], None] | None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> None:
        self.resolver = resolver
        self.access_log = access_log
        # not `timeout`: socketserver uses that name for handle_request()'s wait
        self.timeout_seconds = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = False
        #: Set by `serve_until_stopped`: a stop request also ends a wait for a free slot.
        self.stop_signals: StopSignals | None = None
        self.address_family = family  # read by TCPServer.__init__ to create the socket
        super().__init__(address, RegistryHandler)


def _address_family(host: str) -> socket.AddressFamily:
    """The family to listen with: AF_INET6 for `::1`, `::` or a name that resolves to
    IPv6 first; AF_INET for an IPv4 address and for "" (every IPv4 interface)."""
    if not host:
        return socket.AF_INET
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise RegistrishError(
            f"--host {host}: not an address of this machine ({reason})",
            hint="pass an IP address: 127.0.0.1 or ::1 (this machine), 0.0.0.0 or :: (all)",
        ) from None
    return infos[0][0]


def _bind_hint(error: OSError) -> str:
    if error.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):  # EINVAL: a link-local scope
        return "--host must be an address of this machine: 127.0.0.1, ::1, 0.0.0.0 or ::"
    if error.errno == errno.EACCES:
        return "ports below 1024 need privileges: pick a --port above 1023"
    if error.errno == errno.EADDRINUSE:
        return "pick another --port, or stop what is using it"
    return "check --host and --port"


def make_server(
    *,
    root: Path,
    host: str,
    port: int,
    policy: Policy,
    access_log: Callable[[str], None] | None,
    timeout: float = DEFAULT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> RegistryServer:
    """Bind (port 0 picks a free one) without serving yet. Raises `LocalError`, or a
    usage error for a --host that is no address."""
    if not (root / "v2").is_dir():
        raise LocalError(
            f"{root}: no registry tree here (no v2/ directory)",
            hint="run `registrish sync` first, or pass --root DIR",
        )
    family = _address_family(host)
    shown = f"[{host}]" if ":" in host else host
    try:
        return RegistryServer(
            (host, port),
            TreeResolver(Layout(root), policy),
            access_log,
            timeout=timeout,
            max_connections=max_connections,
            family=family,
        )
    except OSError as exc:
        raise LocalError(
            f"cannot listen on {shown}:{port}: {exc.strerror or exc}", hint=_bind_hint(exc)
        ) from None


def serve_until_stopped(server: RegistryServer, stop: StopSignals) -> None:
    """Serve until SIGTERM or SIGINT (`stop`, installed before the socket was bound: one
    that came during start-up ends the loop as it starts), then close the socket."""
    server.stop_signals = stop
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            selector.register(stop, selectors.EVENT_READ)
            # `requested` each turn: waiting for a free slot may have read the pipe already.
            while not stop.requested:
                for key, _ in selector.select():
                    if key.fileobj is server:
                        server.handle_request()
    finally:
        server.server_close()
