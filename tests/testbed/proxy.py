"""A threaded reverse proxy for the test bed that records every request (with its headers and
timing) and injects faults: in front of a registry, or of object storage to see what
reaches it."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .procs import LOOPBACK


# -- CountingProxy ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Respond:
    """Fault action: answer with this instead of asking the upstream."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Drop:
    """Fault action: close the connection without an answer."""


# Body faults: the request is forwarded and the upstream's answer altered on its way back.
# They apply to ``GET`` answers with a body (2xx); any other answer is passed through as is.
@dataclass(frozen=True)
class Truncate:
    """Send only the first ``keep`` bytes of the body, then close the connection.

    ``honest_length=False`` keeps the upstream's ``Content-Length`` (the client sees the
    connection end early); ``True`` announces ``keep`` bytes (a short body that looks whole).
    """

    keep: int
    honest_length: bool = False


@dataclass(frozen=True)
class Reset:
    """Send the upstream's headers and the first ``after`` body bytes, then a TCP RST."""

    after: int = 0


@dataclass(frozen=True)
class Flip:
    """Flip every bit of the byte at ``offset`` (from the end when negative)."""

    offset: int = 0


@dataclass(frozen=True)
class Extra:
    """Append ``data`` to the body; ``Content-Length`` counts it (a longer body that looks
    whole) unless ``honest_length=False`` (the extra bytes trail the announced length)."""

    data: bytes = b"\x00trailing garbage"
    honest_length: bool = True


@dataclass(frozen=True)
class Drip:
    """Send the body unaltered but ``chunk`` bytes at a time, ``delay`` seconds apart."""

    chunk: int = 4096
    delay: float = 0.01


@dataclass(frozen=True)
class Hold:
    """Send the first ``after`` bytes of the body, then wait for ``release`` (at most
    ``timeout`` s) before the rest: a download caught mid-way for as long as a test needs,
    whatever the machine's speed."""

    after: int
    release: threading.Event
    timeout: float = 120.0


@dataclass(frozen=True)
class Pause:
    """Forward the request only once ``release`` is set (at most ``timeout`` s): a client
    stopped at a chosen request for as long as a test needs, whatever the machine's speed."""

    release: threading.Event
    timeout: float = 120.0


@dataclass(frozen=True)
class AddHeaders:
    """Forward, and add ``headers`` to the upstream's answer (any method and status): say,
    Docker Hub's ``ratelimit-limit`` / ``ratelimit-remaining``."""

    headers: dict[str, str]


BodyFault = Truncate | Reset | Flip | Extra | Drip | Hold
#: What a fault hook may return; ``None`` means "forward normally".
FaultAction = Respond | Drop | Pause | AddHeaders | BodyFault


def rate_limited(retry_after: int = 1) -> Respond:
    """A ``429 Too Many Requests`` with ``Retry-After`` in seconds, like Docker Hub's."""
    body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
    return Respond(429, body, {"Retry-After": str(retry_after), "Content-Type": "application/json"})


def html_page(status: int = 200) -> Respond:
    """An HTML error page, as a captive portal or a misconfigured CDN answers."""
    body = b"<!DOCTYPE html><html><body><h1>Service temporarily unavailable</h1></body></html>"
    return Respond(status, body, {"Content-Type": "text/html; charset=utf-8"})


def redirect(location: str, status: int = 307) -> Respond:
    """A redirect to ``location`` (an absolute URL on another origin, like a blob CDN)."""
    return Respond(status, b"", {"Location": location})


def mangle(body: bytes, fault: BodyFault) -> bytes:
    """The bytes ``fault`` makes of ``body`` (what the client receives, ignoring timing)."""
    if isinstance(fault, Truncate):
        return body[: fault.keep]
    if isinstance(fault, Reset):
        return body[: fault.after]
    if isinstance(fault, Flip):
        if not body:
            return body
        i = fault.offset % len(body)
        return body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]
    if isinstance(fault, Extra):
        return body + fault.data
    return body


FaultHook = Callable[[str, str], "FaultAction | None"]

# Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_CHUNK = 64 * 1024


class CountingProxy:
    """A threaded HTTP reverse proxy in front of ``upstream_url`` that records every request.

    ``proxy.url``/``proxy.host`` is where clients go; each request is recorded as
    ``(method, path)`` (path with query string) before it is forwarded. Bodies stream both
    ways; every end-to-end header is kept as sent (``Location``, ``Link``,
    ``Docker-Content-Digest``, ``WWW-Authenticate``, the client's ``Host`` — so absolute
    ``Location`` URLs the upstream builds point back at the proxy); ``HEAD`` answers carry the
    upstream's ``Content-Length`` and no body.

    Fault injection: ``fault`` (constructor argument or attribute, swappable at any time) is
    called as ``fault(method, path)`` for every request *after* it is recorded; it returns
    ``None`` to forward normally, :class:`Respond` to answer locally, :class:`Drop` to close
    the connection without an answer, or a body fault (:class:`Truncate`, :class:`Reset`,
    :class:`Flip`, :class:`Extra`, :class:`Drip`) to forward and alter the answer's body,
    or :class:`AddHeaders` to forward and add headers to the answer.
    :func:`rate_limited`, :func:`html_page` and :func:`redirect` build common answers.
    Request headers are kept too (:attr:`request_headers`) so a test can tell whether
    ``Authorization`` reached this origin.
    """

    def __init__(self, upstream_url: str, *, fault: FaultHook | None = None) -> None:
        hostport = upstream_url.removeprefix("http://").rstrip("/")
        host, _, port = hostport.partition(":")
        if host not in {LOOPBACK, "localhost"}:
            raise ValueError(f"the proxy forwards to loopback only, not {host!r}")
        self.upstream = (host, int(port or 80))
        self.fault: FaultHook | None = fault
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        self._headers: list[tuple[str, str, dict[str, str]]] = []
        self._in_flight = 0
        #: The most requests answered at once since the start (or `reset`).
        self.max_in_flight = 0
        self._httpd = _ProxyServer((LOOPBACK, 0), _ProxyHandler, self)
        self.port: int = self._httpd.server_address[1]
        self.host = f"{LOOPBACK}:{self.port}"
        self.url = f"http://{self.host}"
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> CountingProxy:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"CountingProxy:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- recording
    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a request as in flight while it is answered (`max_in_flight`)."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self._requests.append((method, path))

    @property
    def requests(self) -> list[tuple[str, str]]:
        """A snapshot copy of every ``(method, path)`` seen, in arrival order."""
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._headers.clear()
            self.max_in_flight = self._in_flight

    def record_headers(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self._headers.append((method, path, headers))

    @property
    def request_headers(self) -> list[tuple[str, str, dict[str, str]]]:
        """Every request's ``(method, path, headers)`` (names lowercased), in arrival order.
        Tests read it to prove what reached this origin (``Authorization`` or not)."""
        with self._lock:
            return [(m, p, dict(h)) for m, p, h in self._headers]

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        """How many recorded requests match ``method`` (exact) and contain ``path_contains``."""
        with self._lock:
            return sum(
                1
                for m, p in self._requests
                if (method is None or m == method) and (path_contains is None or path_contains in p)
            )


class _ProxyServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        proxy: CountingProxy,
    ) -> None:
        self.proxy = proxy
        super().__init__(address, handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client hanging up mid-answer (often on purpose: it refused an oversized or
        # corrupt body) is not a test-bed failure; anything else is printed as usual.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet; the proxy's record is the log

    def _handle(self) -> None:
        with self.server.proxy.in_flight():
            self._answer()

    def _answer(self) -> None:
        proxy = self.server.proxy
        method, path = self.command, self.path
        proxy.record(method, path)
        proxy.record_headers(method, path, {k.lower(): v for k, v in self.headers.items()})
        action = proxy.fault(method, path) if proxy.fault is not None else None
        if isinstance(action, Pause):
            action.release.wait(action.timeout)
            action = None
        if isinstance(action, Drop):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(action, Respond):
            self._drain_request_body()
            self.send_response(action.status)
            for k, v in action.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(action.body)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(action.body)
            return
        self._forward(method, path, action)

    def _request_body(self) -> Iterator[bytes] | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        if length == 0:
            return None
        return self._read_exact(length)

    def _read_exact(self, length: int) -> Iterator[bytes]:
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(_CHUNK, remaining))
            if not chunk:
                raise ConnectionError("client closed mid-body")
            remaining -= len(chunk)
            yield chunk

    def _read_chunked(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    def _drain_request_body(self) -> None:
        body = self._request_body()
        if body is not None:
            for _ in body:
                pass

    def _forward(self, method: str, path: str, fault: BodyFault | AddHeaders | None = None) -> None:
        host, port = self.server.proxy.upstream
        conn = http.client.HTTPConnection(host, port, timeout=120)
        answered = False
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                    conn.putheader(k, v)
            body = self._request_body()
            chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            elif body is not None:
                conn.putheader("Content-Length", self.headers["Content-Length"])
            conn.endheaders()
            if body is not None:
                for chunk in body:
                    if chunked:
                        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    else:
                        conn.send(chunk)
                if chunked:
                    conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
            answered = True
            added: dict[str, str] = {}
            if isinstance(fault, AddHeaders):
                added, fault = fault.headers, None
            if fault is not None and method == "GET" and 200 <= resp.status < 300:
                self._send_mangled(resp, fault)
                return
            self.send_response_only(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            for k, v in [*resp.getheaders(), *added.items()]:
                if k.lower() not in _HOP_BY_HOP:
                    self.send_header(k, v)
            has_body = method != "HEAD" and resp.status not in (204, 304) and resp.status >= 200
            stream_chunked = has_body and length is None
            if stream_chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if has_body:
                while chunk := resp.read(_CHUNK):
                    if stream_chunked:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    else:
                        self.wfile.write(chunk)
                if stream_chunked:
                    self.wfile.write(b"0\r\n\r\n")
            if resp.will_close:
                self.close_connection = True
        except OSError as exc:
            self.close_connection = True
            if not answered:  # the upstream failed us: say so instead of hanging up
                message = f"CountingProxy: upstream error: {exc}".encode()
                with contextlib.suppress(OSError):
                    self.send_response(502)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(message)))
                    self.end_headers()
                    if method != "HEAD":
                        self.wfile.write(message)
        finally:
            conn.close()

    def _send_mangled(self, resp: http.client.HTTPResponse, fault: BodyFault) -> None:
        """Answer with the upstream's status and headers and ``fault`` applied to its body
        (buffered: test blobs are small)."""
        body = resp.read()
        sent = mangle(body, fault)
        honest = isinstance(fault, (Truncate, Extra)) and fault.honest_length
        length = len(sent) if honest else len(body)
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.close_connection = True  # a mangled exchange never reuses its connection
        if isinstance(fault, Hold):
            self.wfile.write(sent[: fault.after])
            self.wfile.flush()
            fault.release.wait(fault.timeout)
            self.wfile.write(sent[fault.after :])
            self.wfile.flush()
            return
        if isinstance(fault, Drip):
            for start in range(0, len(sent), max(1, fault.chunk)):
                self.wfile.write(sent[start : start + fault.chunk])
                self.wfile.flush()
                time.sleep(fault.delay)
            return
        self.wfile.write(sent)
        self.wfile.flush()
        if isinstance(fault, Reset):
            # SO_LINGER 0: close() sends RST instead of FIN; the server's own shutdown of
            # the (now closed) socket fails quietly.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    do_GET = _handle
    do_HEAD = _handle
    do_PUT = _handle
    do_POST = _handle
    do_PATCH = _handle
    do_DELETE = _handle
    do_OPTIONS = _handle
