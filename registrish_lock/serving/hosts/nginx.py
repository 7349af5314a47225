"""nginx: one `server` block (`registrish.conf`) to `include` inside `http {}`.

Its size does not depend on the tree: manifests are found through their typed twins
(`try_files $uri.~oci-index …`) and the suffix picks the Content-Type from a `types`
block, so no rule names a manifest.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

from ...oci import mediatypes
from ...tls import CIPHERS
from ...tree.layout import LAST_PAGE_SUFFIX, twin_name
from .. import routes
from . import base

FILENAME = "registrish.conf"
TAG_RE = "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
API = "add_header {} {} always;".format(*routes.API_VERSION_HEADER)
#: How long nginx may answer from a cached file handle (or a cached miss) before re-checking.
OPEN_FILE_CACHE_VALID = "10s"
#: What the tag table gives for a tag it does not know: a file name no sync writes.
NO_TWIN = "~unknown"


def _not_found(code: routes.ErrorCode) -> str:
    return (
        f"default_type {routes.JSON};\n        {API}\n        return 404 '{base.error_text(code)}';"
    )


def tag_digest_map(tags: Sequence[base.TaggedDigest]) -> Iterator[str]:
    """Two `map "name:tag"` tables at http level, one line per tag each (none per digest):
    the typed twin of the tag's digest, so a tag is served with one file look-up, and the
    digest for its header (an exact map: a regex taking it out of the first cost ~4% of
    req/s, measured). An unknown key maps to a name no sync writes (`~` cannot start a
    twin's stem) and to no digest: nginx sends no header with an empty value. The text
    comes a line at a time: at 100,000 tags it is 21 MB, written as it is made."""
    longest = max((len(t.name) + len(t.tag) + 1 for t in tags), default=0)
    sizing = ""
    # A bucket must hold a few whole keys (nginx otherwise warns "could not build optimal
    # map_hash" and may fail): the default is one 64-byte cache line and 2,048 buckets.
    bucket = _pow2(4 * (longest + 16)) if tags else 64
    if bucket > 64:
        sizing += f"map_hash_bucket_size {bucket};\n"
    if len(tags) > 1024:
        sizing += f"map_hash_max_size {_pow2(2 * len(tags))};\n"
    key = '"$registrish_name:$registrish_tag"'
    yield f'{sizing}map {key} $registrish_tag_twin {{\n    default "{NO_TWIN}";'
    for part in base.slices(tags):
        yield "".join(
            [f'\n    "{t.name}:{t.tag}" "{twin_name(t.digest, t.media_type)}";' for t in part]
        )
    yield f'\n}}\nmap {key} $registrish_tag_digest {{\n    default "";'
    for part in base.slices(tags):
        yield "".join([f'\n    "{t.name}:{t.tag}" "{t.digest}";' for t in part])
    yield "\n}"


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _tls(ctx: base.HostContext) -> str:
    """The HTTPS settings of the registry's server block ('' for plain HTTP)."""
    if ctx.tls.certificate is None or ctx.tls.key is None:
        return ""
    return f"""
    # HTTPS (HTTP/2 for clients that offer it): TLS 1.2 and 1.3 only; for TLS 1.2, only
    # AEAD suites with forward secrecy (TLS 1.3's are all strong).
    ssl_certificate "{ctx.tls.certificate}";
    ssl_certificate_key "{ctx.tls.key}";
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {CIPHERS};
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:registrish_tls:10m;
    ssl_session_timeout 1d;
    ssl_session_tickets off;
"""


def _redirect_server(ctx: base.HostContext) -> str:
    """`[registry] redirect_http`: a plain-HTTP server sending every request to HTTPS."""
    if ctx.tls.redirect_http is None or not ctx.tls.own_certificate:
        return ""
    return f"""# Plain HTTP on {ctx.tls.redirect_http}: every request is redirected to HTTPS.
server {{
    listen {ctx.tls.redirect_http};
    server_name {ctx.tls.server_name or "_"};
    return 308 {ctx.https_url("$host")}$request_uri;
}}
"""


class NginxRenderer:
    name = "nginx"
    needs_entries = False

    def render(self, ctx: base.HostContext) -> base.Rendered:
        short = routes.short_cache(ctx.policy.tag_cache_seconds)
        types = "\n".join(f"            {mt} ~{kind};" for kind, mt in base.twin_kinds())
        tries = " ".join(f"$uri.~{kind}" for kind in mediatypes.KINDS)
        scheme = "https" if ctx.tls.own_certificate else "http"
        head = f"""\
# {base.GENERATED}
# The static registry at {ctx.root}, on {scheme}://{ctx.listen}/.
# Use: `include {ctx.hosts_dir / FILENAME};` inside nginx's http {{}} block, and
# `nginx -s reload` after each sync (the tag -> digest table below changes with the lock).
"""
        tail = f"""
# `?last=<tag>` (a valid tag only) -> its page `tags/<tag>{LAST_PAGE_SUFFIX}`; else the list.
map $arg_last $registrish_last_page {{
    default "list";
    "~^{TAG_RE}$" "$arg_last{LAST_PAGE_SUFFIX}";
}}
{_redirect_server(ctx)}server {{
    listen {ctx.listen}{" ssl http2" if ctx.tls.own_certificate else ""};
    server_name {ctx.tls.server_name or "_"};
    root "{ctx.root}";
{_tls(ctx)}
    # Compression would change the bytes clients verify against digests.
    gzip off;
    # No `sendfile`/`tcp_nopush` here: this block follows your http {{}} block (nginx's
    # default is off, Debian's nginx.conf turns both on). Measured with bench/run.py on
    # loopback and over a veth pair (BENCHMARKS.md, `serving`), adding `sendfile on;
    # tcp_nopush on;` here served blobs at 0.56x-1.06x of nginx's default (20 KiB over veth
    # 0.58x-0.77x, 200 MiB on loopback 0.56x-0.68x) in two runs. On a real network card
    # sendfile saves a copy of every byte (more so with TSO): measure your own link (wrk on
    # a blob) before you choose.
    # Cache open files and failed look-ups: a manifest is found by probing its typed twins
    # (a failed stat() per wrong kind), which made this config serve 0.77x the req/s of bare
    # nginx. An entry is re-checked by name after {OPEN_FILE_CACHE_VALID}, so a tag moved or a
    # file removed without a reload is seen late by at most that (clients may cache a
    # tag for {ctx.policy.tag_cache_seconds} s); the reload after each sync starts workers
    # with empty caches.
    open_file_cache max=10000 inactive=60s;
    open_file_cache_valid {OPEN_FILE_CACHE_VALID};
    open_file_cache_errors on;
    autoindex off;
    absolute_redirect off;
    charset off;
    types {{ }}
    default_type {routes.OCTET_STREAM};
    error_page 404 @registrish_name_unknown;
    # Read-only, as `registrish serve`: anything but {" and ".join(routes.ALLOWED_METHODS)} gets the JSON 405.
    if ($request_method !~ ^({"|".join(routes.ALLOWED_METHODS)})$) {{
        return 405;
    }}
    error_page 405 @registrish_read_only;

    # Never served by name: the state directory, dotfiles and the typed twins.
    location ~ "/\\.|\\.~" {{
        {_not_found(routes.ErrorCode.NAME_UNKNOWN)}
    }}

    # The API ping: GET /v2/ -> 200 {{}}.
    location = /v2/ {{
        default_type {routes.JSON};
        add_header Cache-Control "{short}";
        {API}
        try_files /v2/index =404;
    }}
    location = /v2 {{
        default_type {routes.JSON};
        add_header Cache-Control "{short}";
        {API}
        try_files /v2/index =404;
    }}

    location = /v2/_catalog {{
        default_type {routes.JSON};
        add_header Cache-Control "{short}";
        {API}
        try_files $uri @registrish_name_unknown;
    }}
    # ?last=<tag> -> the page of tags after <tag> that sync wrote (`n` is ignored).
    location ~ "^(?<registrish_tags>/v2/.+/tags/)list$" {{
        default_type {routes.JSON};
        add_header Cache-Control "{short}";
        {API}
        try_files $registrish_tags$registrish_last_page $uri @registrish_name_unknown;
    }}

    # Manifests: the typed twin's suffix gives the exact media type.
    location ~ "^/v2/.+/manifests/(?<registrish_digest>sha256:[a-f0-9]{{64}})$" {{
        types {{
{types}
        }}
        add_header Docker-Content-Digest $registrish_digest;
        add_header Cache-Control "{routes.IMMUTABLE}";
        {API}
        try_files {tries} @registrish_manifest_unknown;
    }}
    # A tag is served through the table: the manifest of the digest the loaded table names,
    # so the body always matches its Docker-Content-Digest, even after a sync has moved the
    # tag on disk and before the reload that loads the new table.
    location ~ "^/v2/(?<registrish_name>.+)/manifests/(?<registrish_tag>{TAG_RE})$" {{
        types {{
{types}
        }}
        add_header Docker-Content-Digest $registrish_tag_digest;
        add_header Cache-Control "{short}";
        {API}
        try_files /v2/$registrish_name/manifests/$registrish_tag_twin @registrish_tag_file;
    }}
    # A tag the loaded table does not know (added since the reload), or whose old manifest
    # was collected: the tag's own file, with no digest rather than a wrong one.
    location @registrish_tag_file {{
        types {{
{types}
        }}
        add_header Cache-Control "{short}";
        {API}
        try_files {tries} @registrish_manifest_unknown;
    }}

    location ~ "^/v2/.+/blobs/(?<registrish_blob>sha256:[a-f0-9]{{64}})$" {{
        default_type {routes.OCTET_STREAM};
        add_header Docker-Content-Digest $registrish_blob;
        add_header Cache-Control "{routes.IMMUTABLE}";
        {API}
        try_files $uri @registrish_blob_unknown;
    }}

    # Referrers: the stored index, or the empty one for any other digest.
    location ~ "^/v2/.+/referrers/sha256:[a-f0-9]{{64}}$" {{
        default_type {mediatypes.OCI_INDEX};
        add_header Cache-Control "{short}";
        {API}
        try_files $uri /{routes.EMPTY_REFERRERS_REL};
    }}
    location = /{routes.EMPTY_REFERRERS_REL} {{
        internal;
        default_type {mediatypes.OCI_INDEX};
        add_header Cache-Control "{short}";
        {API}
    }}

    # The browse page (written by sync) at / and /{routes.BROWSE_REL}. A miss is not cached here, so
    # the page written by the first sync shows without a reload.
    location = / {{
        open_file_cache_errors off;
        default_type "{routes.HTML}";
        add_header Cache-Control "{short}";
        try_files /{routes.BROWSE_REL} @registrish_name_unknown;
    }}
    location = /{routes.BROWSE_REL} {{
        open_file_cache_errors off;
        default_type "{routes.HTML}";
        add_header Cache-Control "{short}";
        try_files $uri @registrish_name_unknown;
    }}

    # Its per-repository data files: named by their content, so cached forever.
    location ~ "^/{routes.BROWSE_DATA_RE}$" {{
        default_type {routes.JSON};
        add_header Cache-Control "{routes.IMMUTABLE}";
        try_files $uri @registrish_name_unknown;
    }}

    location @registrish_read_only {{
        default_type {routes.JSON};
        add_header Allow "{routes.ALLOW}" always;
        {API}
        return 405 '{base.error_text(routes.ErrorCode.UNSUPPORTED)}';
    }}
    location @registrish_manifest_unknown {{
        {_not_found(routes.ErrorCode.MANIFEST_UNKNOWN)}
    }}
    location @registrish_blob_unknown {{
        {_not_found(routes.ErrorCode.BLOB_UNKNOWN)}
    }}
    location @registrish_name_unknown {{
        {_not_found(routes.ErrorCode.NAME_UNKNOWN)}
    }}
    location / {{
        {_not_found(routes.ErrorCode.NAME_UNKNOWN)}
    }}
}}
"""
        return base.Rendered(
            (
                base.Output(
                    ctx.hosts_dir / FILENAME,
                    base.framed(head, functools.partial(tag_digest_map, ctx.tag_digests), tail),
                ),
            ),
            base.plain_http_warning(ctx, "nginx"),
        )
