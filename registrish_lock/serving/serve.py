"""`registrish serve`: the embedded HTTP server for a tree, with exactly the route
table's semantics (`routes`), plus what only a dynamic server can do: paginated
`tags/list?n=&last=` and filtered `referrers/<digest>?artifactType=`.

`TreeResolver.answer` is the whole behaviour (path → `Answer`), independent of the
socket; `RegistryHandler` only parses the request, sends the answer and logs one line.
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
import json
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
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import LocalError, RegistrishError
from ..oci import mediatypes
from ..oci.manifest import sha256_digest
from ..oci.reference import is_tag
from ..tree.layout import Layout
from .routes import (
    ALLOW,
    ALLOWED_METHODS,
    EMPTY_REFERRERS,
    PING_DOCUMENT,
    ErrorCode,
    Kind,
    Miss,
    Policy,
    Target,
    classify,
    error_body,
    error_headers,
    headers_for,
)
from .stopsignals import StopSignals

Headers = tuple[tuple[str, str], ...]
#: Seconds a connection may sit idle or take to send a request head, and a blocking
#: send may wait for the client to read (a slow download that progresses is never cut).
DEFAULT_TIMEOUT = 30.0
#: Connections served at once (one thread each); more wait in the kernel's listen queue.
DEFAULT_MAX_CONNECTIONS = 256
_MAX_KIND_HINTS = 100_000
#: Bytes read from a blob per write (one buffer per connection, allocated on its first blob).
SEND_BUFFER = 128 * 1024
#: SIOCOUTQ, the ioctl for a socket's unsent bytes, is TIOCOUTQ's number on Linux.
_SIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if sys.platform == "linux" else None


@dataclass(frozen=True)
class Answer:
    """What to send: status, headers, and either `body` or `size` bytes of `file`
    from `offset`. `Content-Length` is added by the sender."""

    status: int
    headers: Headers
    body: bytes = b""
    file: Path | None = None
    offset: int = 0
    size: int = 0

    @property
    def length(self) -> int:
        return self.size if self.file is not None else len(self.body)


def parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """One `bytes=` range → (start, end inclusive); None to ignore the header (send
    everything, as RFC 9110 allows for multiple or malformed ranges); False when the
    range cannot be satisfied (416)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            suffix = int(last)
            if suffix <= 0:
                return False
            return (max(0, size - suffix), size - 1) if size else False
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        return False
    if end < start:
        return None
    return start, min(end, size - 1)


@dataclass
class TreeResolver:
    """Answers requests from a tree on disk. Thread-safe; digests of tag files are
    computed once per file version (sync replaces files, so the inode changes)."""

    layout: Layout
    policy: Policy = field(default_factory=Policy)
    _digests: dict[tuple[int, int, int, int], str] = field(default_factory=dict)
    #: The kind a manifest path was last found as, tried first: a miss costs an open().
    #: Only a hint: a stale one costs one failed open, then the usual probe.
    _kinds: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, raw_path: str, headers: Mapping[str, str]) -> Answer:
        """`headers` has lower-case names."""
        if method not in ALLOWED_METHODS:
            return Answer(
                405,
                (*error_headers(), ("Allow", ALLOW)),
                error_body(ErrorCode.UNSUPPORTED),
            )
        split = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(split.path)
        query = urllib.parse.parse_qs(split.query) if split.query else {}
        target = classify(path)
        if isinstance(target, Miss):
            return self._error(target.status, target.code, path)
        if target.kind is Kind.PING:
            return Answer(200, headers_for(Kind.PING, policy=self.policy), PING_DOCUMENT)
        # Manifests and blobs look for their file first and ask whether the repository
        # exists only on a miss: one stat less on every hit, the hot path.
        if target.kind in (Kind.MANIFEST_TAG, Kind.MANIFEST_DIGEST):
            return self._manifest(target)
        if target.kind is Kind.BLOB:
            return self._blob(target, headers.get("range"))
        if target.name and not self.layout.repo_dir(target.name).is_dir():
            return self._error(404, ErrorCode.NAME_UNKNOWN, target.name)
        if target.kind is Kind.REFERRERS:
            return self._referrers(target, query.get("artifactType", []))
        if target.kind is Kind.TAGS_LIST:
            return self._tags_list(target, query)
        return self._json_file(target)

    # --- kinds ---------------------------------------------------------------------------
    def _error(self, status: int, code: ErrorCode, detail: str) -> Answer:
        return Answer(status, error_headers(), error_body(code, detail))

    def _missing(self, target: Target, code: ErrorCode, detail: str) -> Answer:
        """404 for a missing manifest or blob: NAME_UNKNOWN when the repository is absent."""
        if not self.layout.repo_dir(target.name).is_dir():
            return self._error(404, ErrorCode.NAME_UNKNOWN, target.name)
        return self._error(404, code, detail)

    def _manifest(self, target: Target) -> Answer:
        exact = str(self.layout.path(target.rel))
        hint = self._kinds.get(exact)
        kinds = mediatypes.KINDS if hint is None else (hint, *mediatypes.KINDS)
        for kind in kinds:
            media_type = mediatypes.TYPE_OF_KIND[kind]
            twin = f"{exact}.~{kind}"
            # Read the bytes now, through one open file: sync may replace (or, on a kind
            # change, remove) a tag's twin before the handler would open it, and length,
            # digest and body must all describe one version (tests/test_crash_serve.py).
            try:
                fd = os.open(twin, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                st = os.fstat(fd)
                data = _read_all(fd, st.st_size)
            finally:
                os.close(fd)
            if hint != kind:
                if len(self._kinds) >= _MAX_KIND_HINTS:
                    self._kinds.clear()  # bounded; refilled by the next requests
                self._kinds[exact] = kind
            digest = target.ref if target.kind is Kind.MANIFEST_DIGEST else self._digest(data, st)
            return Answer(
                200,
                headers_for(target.kind, policy=self.policy, media_type=media_type, digest=digest),
                data,
            )
        return self._missing(target, ErrorCode.MANIFEST_UNKNOWN, f"{target.name}:{target.ref}")

    def _digest(self, data: bytes, st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._digests.get(key)
        if cached is None:
            cached = sha256_digest(data)
            with self._lock:
                self._digests[key] = cached
        return cached

    def _blob(self, target: Target, range_header: str | None) -> Answer:
        path = self.layout.path(target.rel)
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return self._missing(target, ErrorCode.BLOB_UNKNOWN, target.ref)
        base = (
            *headers_for(Kind.BLOB, policy=self.policy, digest=target.ref),
            ("Accept-Ranges", "bytes"),
        )
        wanted = parse_range(range_header, size) if range_header else None
        if wanted is False:
            return Answer(416, (*base, ("Content-Range", f"bytes */{size}")))
        if isinstance(wanted, tuple):
            start, end = wanted
            return Answer(
                206,
                (*base, ("Content-Range", f"bytes {start}-{end}/{size}")),
                file=path,
                offset=start,
                size=end - start + 1,
            )
        return Answer(200, base, file=path, size=size)

    def _referrers(self, target: Target, artifact_types: list[str]) -> Answer:
        headers = headers_for(Kind.REFERRERS, policy=self.policy)
        try:
            data = self.layout.path(target.rel).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            data = EMPTY_REFERRERS
        if not artifact_types:
            return Answer(200, headers, data)
        doc = json.loads(data)
        # a literal '+' (application/spdx+json) arrives form-decoded as ' '; no media type
        # has a space, so take it back
        wanted = {t.replace(" ", "+") for t in artifact_types}
        doc["manifests"] = [m for m in doc.get("manifests", []) if m.get("artifactType") in wanted]
        body = json.dumps(doc, separators=(",", ":")).encode()
        return Answer(200, (*headers, ("OCI-Filters-Applied", "artifactType")), body)

    def _json_file(self, target: Target) -> Answer:
        path = self.layout.path(target.rel)
        try:
            size = path.stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return self._error(404, ErrorCode.NAME_UNKNOWN, target.name or target.rel)
        return Answer(200, headers_for(target.kind, policy=self.policy), file=path, size=size)

    def _tags_list(self, target: Target, query: Mapping[str, list[str]]) -> Answer:
        if "n" not in query and "last" not in query:
            return self._json_file(target)
        try:
            doc = json.loads(self.layout.path(target.rel).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return self._error(404, ErrorCode.NAME_UNKNOWN, target.name)
        tags = sorted(t for t in doc.get("tags") or [] if isinstance(t, str) and is_tag(t))
        last = query.get("last", [""])[0]
        if last:
            tags = [t for t in tags if t > last]
        headers = headers_for(Kind.TAGS_LIST, policy=self.policy)
        n_text = query.get("n", [""])[0]
        if n_text:
            try:
                n = int(n_text)
            except ValueError:
                return Answer(
                    400,
                    error_headers(),
                    json.dumps(
                        {"errors": [{"code": "PAGINATION_NUMBER_INVALID", "message": "invalid n"}]}
                    ).encode(),
                )
            if 0 <= n < len(tags):
                tags = tags[:n]
                if tags:
                    nxt = urllib.parse.urlencode({"n": n, "last": tags[-1]})
                    link = f'</v2/{target.name}/tags/list?{nxt}>; rel="next"'
                    headers = (*headers, ("Link", link))
        body = json.dumps({"name": target.name, "tags": tags}, separators=(",", ":")).encode()
        return Answer(200, headers, body)


def _read_all(fd: int, size: int) -> bytes:
    """The `size` bytes of a file from `fd`. Files in the tree are replaced, never written
    in place, so the size from fstat is the file's: no read for an end-of-file is needed
    (os.read may still return less than asked)."""
    chunks = []
    while size > 0 and (chunk := os.read(fd, size)):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


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
