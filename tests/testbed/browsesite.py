"""What every host must answer for the browse page and its data files (shared by the
static-host, vendor-host and Chromium tests)."""

from __future__ import annotations

from collections.abc import Callable

from registrish_lock.serving.browse_page import BrowseSite
from registrish_lock.serving.routes import IMMUTABLE, Kind, Policy, headers_for

#: GET path → (status, headers with lower-case names, body).
Getter = Callable[[str], tuple[int, dict[str, str], bytes]]


def assert_site_served(
    get: Getter,
    site: BrowseSite,
    *,
    page_paths: tuple[str, ...] = ("/", "/index.html"),
    cache_control: bool = True,
) -> None:
    """`page_paths` answer the page as HTML; every data file answers its bytes as JSON,
    cached forever (`cache_control=False` for a host that overrides Cache-Control); a
    data file the page does not name is a 404."""
    page_type = dict(headers_for(Kind.BROWSE, policy=Policy()))["Content-Type"]
    for path in page_paths:
        status, headers, body = get(path)
        assert status == 200, path
        assert headers["content-type"].replace(" ", "").lower() == page_type.replace(" ", "")
        assert body == site.page, path
    assert site.data, "a site with repositories has data files"
    for rel, data in site.data.items():
        status, headers, body = get("/" + rel)
        assert (status, body) == (200, data), rel
        assert headers["content-type"].split(";")[0] == "application/json", rel
        if cache_control:
            assert headers["cache-control"] == IMMUTABLE, rel
    assert get("/browse/" + "0" * 64 + ".json")[0] == 404
