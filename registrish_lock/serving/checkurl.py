"""The URL `registrish check` is given: validated before anything is read, and shown
without its credentials."""

from __future__ import annotations

import re

import httpx

from ..errors import RegistrishError


def validate_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host; else a usage error naming the fix."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise RegistrishError(
            f"{redact_url(url)!r} is not a valid URL: {exc}",
            hint="write it as https://HOST[:PORT][/PATH], the URL where /v2/ is served",
        ) from None
    if "://" not in url:
        raise RegistrishError(
            f"{url!r} has no scheme", hint=f"write it as https://{url} (or http://{url})"
        )
    if parsed.scheme not in ("http", "https"):
        raise RegistrishError(
            f"{redact_url(url)!r}: check speaks HTTP, not {parsed.scheme}://",
            hint="write it as https://HOST[:PORT] or http://HOST[:PORT]",
        )
    if not parsed.host:
        raise RegistrishError(
            f"{redact_url(url)!r} names no host", hint="write it as https://HOST[:PORT][/PATH]"
        )
    if parsed.query or parsed.fragment:
        raise RegistrishError(
            f"{redact_url(url)!r} has a query or fragment, which would be sent with every request",
            hint="write it as https://HOST[:PORT][/PATH], the URL where /v2/ is served",
        )
    return url


def redact_url(url: str) -> str:
    """`url` without a `user:password@` part: what check prints and logs."""
    return _USERINFO.sub(r"\1", str(url), count=1)


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")
