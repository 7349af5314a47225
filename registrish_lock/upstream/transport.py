"""The httpx layer under the registry client (`http.RegistryHttp`): connection pools per
scheme, the socket read size, bodies read raw or up to a cap, and what a transport error
means in a sentence. URLs are logged only as `shown` (no query string or userinfo: signed
CDN URLs carry secrets there).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpcore
import httpx

from ..errors import RegistrishError, UpstreamError

MAX_ERROR_BODY = 64 * 1024
_CHUNK = 256 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Socket read size for HTTP/1.1 bodies. httpcore reads 64 KiB at a time, and the Python
#: work per read (h11 events, buffer copies) capped a cold sync at ~240 MiB/s over loopback
#: (issue 6); 1 MiB reads measured 2x that (256 KiB and 4 MiB: 1.5x). recv() returns what
#: has arrived, so small responses are unaffected; each connection buffers at most this.
SOCKET_READ_BYTES = 1 << 20
if getattr(httpcore.HTTP11Connection, "READ_NUM_BYTES", SOCKET_READ_BYTES) < SOCKET_READ_BYTES:
    httpcore.HTTP11Connection.READ_NUM_BYTES = SOCKET_READ_BYTES


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme))


def shown(url: httpx.URL) -> str:
    """A URL as it may be logged: no query string, no userinfo."""
    return str(url.copy_with(query=None, fragment=None, username=None, password=None))


class TransportByScheme(httpx.BaseTransport):
    """Plain-HTTP requests on one pool, HTTPS on another made at the first HTTPS request:
    building a verifying transport loads the CA bundle (0.17 s measured), which a run
    against `insecure` (http://) registries only never needs. HTTPS is always verified."""

    def __init__(self, limits: httpx.Limits) -> None:
        self._limits = limits
        # Only ever given http:// requests (checked per request below): nothing to verify.
        self._plain = httpx.HTTPTransport(verify=False, limits=limits)
        self._tls: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            return self._plain.handle_request(request)
        with self._lock:
            if self._tls is None:
                self._tls = httpx.HTTPTransport(limits=self._limits)
            tls = self._tls
        return tls.handle_request(request)

    def close(self) -> None:
        self._plain.close()
        with self._lock:
            if self._tls is not None:
                self._tls.close()


def raw_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body exactly as sent (no Content-Encoding decoding): digests are of these bytes."""
    if response.is_stream_consumed:  # already in memory (in-process transports do that)
        data = response.content
        for start in range(0, len(data), _CHUNK):
            yield data[start : start + _CHUNK]
        return
    # No chunk_size: httpx would buffer up to it, and a dropped connection would lose that
    # much of what we could have resumed after.
    yield from response.iter_raw()


def drain(response: httpx.Response) -> None:
    read_capped(response, MAX_ERROR_BODY, "response")


def read_capped(
    response: httpx.Response,
    cap: int,
    what: str,
    error: type[RegistrishError] = UpstreamError,
) -> bytes:
    """The body, refusing (and no longer reading) past `cap` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise error(f"{what} is {int(declared)} bytes, over the {cap} byte limit")
    body = bytearray()
    for chunk in response.iter_bytes():
        body.extend(chunk)
        if len(body) > cap:
            raise error(f"{what} is over the {cap} byte limit")
    return bytes(body)


def error_detail(response: httpx.Response) -> str:
    """`` (CODE: message)`` from an OCI error body, if there is one."""
    try:
        body = read_capped(response, MAX_ERROR_BODY, "error")
        doc = json.loads(body)
        first = doc["errors"][0]
        text = f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (
        RegistrishError,
        httpx.HTTPError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ):
        return ""
    return f" ({text[:200]})" if text else ""


def describe_transport_error(exc: httpx.TransportError) -> str:
    text = str(exc).lower()
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if "connection refused" in text:
        return "connection refused"
    if "name or service not known" in text or "name resolution" in text or "nodename" in text:
        return "unknown host"
    if "certificate" in text:
        return "TLS certificate verification failed"
    if "ssl" in text or "tls" in text or "wrong version number" in text:
        return "TLS handshake failed (is it a plain-HTTP registry?)"
    if "reset" in text:
        return "connection reset"
    return type(exc).__name__
