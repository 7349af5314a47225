"""Caddy 2: a `Caddyfile` for `caddy run --config Caddyfile --adapter caddyfile`.

Like nginx, its size does not depend on the tree: a `file` matcher per typed-twin
suffix finds the manifest and sets its exact Content-Type. Headers are deferred
because `file_server` clears Content-Type for unknown extensions.

A tag is served through the tag -> digest table loaded with the config: the manifest
of the digest the table names, with that digest, so header and body always match even
after `sync` moved the tag and before Caddy reloads. Only a tag the table cannot
answer (added since, or its manifest collected) is served from the tag file, with no
Docker-Content-Digest. The admin endpoint is a unix socket in the hosts dir, so
`caddy reload` works and two Caddys never collide on localhost:2019.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from ...oci import mediatypes
from ...tree.layout import LAST_PAGE_SUFFIX
from .. import routes
from . import base

FILENAME = "Caddyfile"
ADMIN_SOCKET = "caddy-admin.sock"
#: sun_path is 108 bytes on Linux, NUL included: Go (so Caddy) refuses longer paths.
MAX_SOCKET_PATH = 107
TAG_RE = "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
#: A repository name in the routes tried before @write and @hidden: no segment starts
#: with "." or holds "~" (so no dotfile, state directory or typed twin).
NAME_RE = "[^/.~][^/~]*(?:/[^/.~][^/~]*)*"
API = " ".join(routes.API_VERSION_HEADER)
#: Exactly what `registrish serve` answers to other methods.
UNSUPPORTED = base.error_text(routes.ErrorCode.UNSUPPORTED)


def _headers(indent: str, *lines: str, api: bool = True) -> str:
    """A deferred `header` block; `api`: with the registry API version (not the browse page's)."""
    body = "".join(f"{indent}\t{line}\n" for line in (*lines, *([API] if api else []), "defer"))
    return f"{indent}header {{\n{body}{indent}}}\n"


def _not_found(indent: str, code: routes.ErrorCode) -> str:
    return (
        f"{indent}header Content-Type {routes.JSON}\n"
        f"{indent}header {API}\n"
        f"{indent}respond `{base.error_text(code)}` 404\n"
    )


def _twins(matcher: str, path: str, extra: tuple[str, ...]) -> str:
    """One handle per twin kind: serve `path`.~<kind> with that kind's Content-Type."""
    t = "\t\t\t"
    out = ""
    for kind, media_type in base.twin_kinds():
        name = f"@{matcher}_{kind.replace('-', '_')}"
        out += f"{t}{name} file {path}.~{kind}\n"
        out += f"{t}handle {name} {{\n"
        out += f"{t}\trewrite * {path}.~{kind}\n"
        out += _headers(t + "\t", f"Content-Type {media_type}", *extra)
        out += f"{t}\tfile_server\n{t}}}\n"
    return out


def _manifest_unknown() -> str:
    t = "\t\t\t"
    return f"{t}handle {{\n{_not_found(t + chr(9), routes.ErrorCode.MANIFEST_UNKNOWN)}{t}}}\n"


_DIGEST = "{registrish_tag_digest}"
_KIND = "{registrish_tag_kind}"
_TYPE = "{registrish_tag_type}"


def tag_digest_map(tags: Sequence[base.TaggedDigest]) -> Iterator[str]:
    """The URL path of each tag -> its digest, the kind of its typed twin and its media
    type, one line per tag (none per digest). Keyed by the path as received, so a later
    rewrite does not change what the placeholders say; a path not in it (a digest, a
    tag added since the config was loaded, anything else) leaves them empty. Made a line
    at a time (it is written as it is made)."""
    t = "\t\t"
    source = "{http.request.orig_uri.path}"
    yield f"{t}map {source} {_DIGEST} {_KIND} {_TYPE} {{\n"
    for part in base.slices(tags):
        yield "".join(
            [
                f"{t}\t/v2/{name}/manifests/{tag} {digest} {mediatypes.KIND_OF[mt]} {mt}\n"
                for name, tag, digest, mt in part
            ]
        )
    yield f"{t}}}\n"


def _tabled(methods: str, cc_short: str) -> str:
    """A tag the table names: its digest's twin, found with one file test and no regex,
    served with that digest. An empty entry names `<dir>/.~`, which sync never writes."""
    t = "\t\t"
    headers = (f"Content-Type {_TYPE}", f"Docker-Content-Digest {_DIGEST}", cc_short)
    return (
        f"{t}@tabled {{\n{t}\tmethod {methods}\n"
        f"{t}\tfile {{http.request.uri.path.dir}}{_DIGEST}.~{_KIND}\n{t}}}\n"
        f"{t}handle @tabled {{\n{t}\trewrite * {{file_match.relative}}\n"
        + _headers(t + "\t", *headers)
        + f"{t}\tfile_server\n{t}}}\n"
    )


def _by_tag(cc_short: str) -> str:
    """A tag the table lacks (added since the last reload, or its old manifest
    collected): the tag file with no digest, never a digest of other bytes; else
    MANIFEST_UNKNOWN."""
    return _twins("mtagfile", "{path}", (cc_short,)) + _manifest_unknown()


def admin_line(hosts_dir: Path) -> tuple[str, tuple[str, ...]]:
    """The global `admin` option and any warning: a unix socket in the hosts dir (only
    who can write there can reconfigure Caddy); `admin off` when that path is too long
    for a socket, since Caddy would not start at all."""
    sock = hosts_dir / ADMIN_SOCKET
    size = len(str(sock).encode())
    if size > MAX_SOCKET_PATH:
        return "admin off", (
            f"caddy: {sock} is {size} bytes, over the {MAX_SOCKET_PATH} a unix socket path "
            "allows: the Caddyfile sets `admin off`, so restart Caddy after each sync "
            "(`caddy reload` cannot work), or choose a shorter hosts directory",
        )
    address = f"unix/{sock}"
    if re.search(r'[\s"{}#]', address):
        address = '"' + address.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"admin {address}", ()


def site_address(ctx: base.HostContext) -> str:
    """Plain HTTP on `listen`; HTTPS with our certificate on `server_name`, else for any
    name the clients use (as nginx's `server_name _`; `bind` still picks the address);
    automatic HTTPS on the name."""
    tls = ctx.tls
    if tls.caddy_automatic:
        assert tls.server_name is not None
        return tls.server_name + ("" if ctx.listen_port == 443 else f":{ctx.listen_port}")
    if tls.own_certificate:
        return f"https://{tls.server_name or ''}:{ctx.listen_port}"
    return f"http://{ctx.listen}"


def _global_tls(ctx: base.HostContext) -> str:
    if not ctx.tls.caddy_automatic:
        # Our own certificate or none: never ask an ACME CA, never bind port 80 unasked.
        return "\tauto_https off\n"
    # Automatic HTTPS: ACME for a public name (Caddy's local CA for localhost or an IP),
    # never installing that CA into this machine's trust store.
    lines = "\tskip_install_trust\n"
    if ctx.tls.redirect_http is not None:
        lines += f"\thttp_port {ctx.tls.redirect_http.port}\n"
    return lines


def _site_tls(ctx: base.HostContext) -> str:
    """TLS 1.2+ with strong suites is Caddy's default: only the certificate is named."""
    if ctx.tls.certificate is None or ctx.tls.key is None:
        return ""
    return f'\ttls "{ctx.tls.certificate}" "{ctx.tls.key}"\n'


def _redirect_site(ctx: base.HostContext) -> str:
    """`[registry] redirect_http` with our own certificate (automatic HTTPS redirects by
    itself, on `http_port`)."""
    redirect = ctx.tls.redirect_http
    if redirect is None or not ctx.tls.own_certificate:
        return ""
    return (
        f"\n# Plain HTTP on {redirect}: every request is redirected to HTTPS.\n"
        f"http://{redirect} {{\n\tbind {redirect.host}\n"
        f"\tredir {ctx.https_url('{host}')}{{uri}} 308\n}}\n"
    )


class CaddyRenderer:
    name = "caddy"
    needs_entries = False

    def render(self, ctx: base.HostContext) -> base.Rendered:
        short = routes.short_cache(ctx.policy.tag_cache_seconds)
        cc_short = f'Cache-Control "{short}"'
        cc_long = f'Cache-Control "{routes.IMMUTABLE}"'
        admin, warnings = admin_line(ctx.hosts_dir)
        methods = " ".join(routes.ALLOWED_METHODS)
        site = site_address(ctx)
        head = f"""\
# {base.GENERATED}
# The static registry at {ctx.root}, on {site}/.
# Run: caddy run --config {ctx.hosts_dir / FILENAME} --adapter caddyfile
# After each sync: caddy reload --config {ctx.hosts_dir / FILENAME} --adapter caddyfile
{{
	{admin}
{_global_tls(ctx)}}}
{_redirect_site(ctx)}
{site} {{
	bind {ctx.listen_host}
{_site_tls(ctx)}	root * "{ctx.root}"
	# No `encode`: compression would change the bytes clients verify against digests.
	# Go's net package sends a file with sendfile(2) where it can (plain HTTP; there is no
	# switch): from 3 MiB up this config serves blobs within noise of a bare `file_server`
	# (BENCHMARKS.md, `serving`). What it adds is a cost per request, not per byte.

	route {{
		# Blobs first, the bulk of all requests: each handle tried before the matching one
		# cost a measurable share of a request (BENCHMARKS.md). The method is part of the
		# matcher, and no path segment may start with "." or hold "~", so nothing the
		# @write and @hidden handles refuse can match here.
		@blob {{
			method {methods}
			path_regexp blob ^/v2/{NAME_RE}/blobs/(sha256:[a-f0-9]{{64}})$
		}}
		handle @blob {{
			@blob_found file
			handle @blob_found {{
{_headers(chr(9) * 4, f"Content-Type {routes.OCTET_STREAM}", "Docker-Content-Digest {re.blob.1}", cc_long)}				file_server
			}}
			handle {{
{_not_found(chr(9) * 4, routes.ErrorCode.BLOB_UNKNOWN)}			}}
		}}

		# Manifests next, matched as blobs are: a tag the table names (what clients pull
		# first), digests, then any other tag. The table names a tag's twin, so one file
		# test and no regex serve it: some 10-25% less CPU per tag request than a test per
		# twin kind (BENCHMARKS.md).
"""
        tail = f"""{_tabled(methods, cc_short)}
		@mdigest {{
			method {methods}
			path_regexp mdigest ^/v2/{NAME_RE}/manifests/(sha256:[a-f0-9]{{64}})$
		}}
		handle @mdigest {{
{_twins("mdigest", "{path}", ("Docker-Content-Digest {re.mdigest.1}", cc_long))}{_manifest_unknown()}		}}

		@mtag {{
			method {methods}
			path_regexp mtag ^/v2/{NAME_RE}/manifests/{TAG_RE}$
		}}
		handle @mtag {{
{_by_tag(cc_short)}		}}

		# Read-only, as `registrish serve`: anything but {" and ".join(routes.ALLOWED_METHODS)} is refused.
		@write not method {" ".join(routes.ALLOWED_METHODS)}
		handle @write {{
			header Content-Type {routes.JSON}
			header Allow "{routes.ALLOW}"
			header {API}
			respond `{UNSUPPORTED}` 405
		}}

		# Never served by name: the state directory, dotfiles and the typed twins.
		@hidden path_regexp hidden (/\\.|\\.~)
		handle @hidden {{
{_not_found(chr(9) * 3, routes.ErrorCode.NAME_UNKNOWN)}		}}

		@ping path /v2 /v2/
		handle @ping {{
			rewrite * /v2/index
{_headers(chr(9) * 3, f"Content-Type {routes.JSON}", cc_short)}			file_server
		}}

		@lists path_regexp lists ^/v2/(_catalog|(.+/tags/)list)$
		handle @lists {{
			# ?last=<tag> -> the page of tags after <tag> that sync wrote (`n` is ignored).
			# (The capture comes from the enclosing matcher: a set's order is not defined.)
			@last_page {{
				vars_regexp {{query.last}} ^{TAG_RE}$
				file /v2/{{re.lists.2}}{{query.last}}{LAST_PAGE_SUFFIX}
			}}
			handle @last_page {{
				rewrite * /v2/{{re.lists.2}}{{query.last}}{LAST_PAGE_SUFFIX}
{_headers(chr(9) * 4, f"Content-Type {routes.JSON}", cc_short)}				file_server
			}}
			@lists_found file
			handle @lists_found {{
{_headers(chr(9) * 4, f"Content-Type {routes.JSON}", cc_short)}				file_server
			}}
			handle {{
{_not_found(chr(9) * 4, routes.ErrorCode.NAME_UNKNOWN)}			}}
		}}

		# Referrers: the stored index, or the empty one for any other digest.
		@referrers path_regexp referrers ^/v2/.+/referrers/sha256:[a-f0-9]{{64}}$
		handle @referrers {{
			@referrers_missing not file
			rewrite @referrers_missing /{routes.EMPTY_REFERRERS_REL}
{_headers(chr(9) * 3, f"Content-Type {mediatypes.OCI_INDEX}", cc_short)}			file_server
		}}

		# The browse page (written by sync) at / and /{routes.BROWSE_REL}.
		@browse path / /{routes.BROWSE_REL}
		handle @browse {{
			@browse_found file /{routes.BROWSE_REL}
			handle @browse_found {{
				rewrite * /{routes.BROWSE_REL}
{_headers(chr(9) * 4, f'Content-Type "{routes.HTML}"', cc_short, api=False)}				file_server
			}}
			handle {{
{_not_found(chr(9) * 4, routes.ErrorCode.NAME_UNKNOWN)}			}}
		}}

		# Its per-repository data files: named by their content, so cached forever.
		@browse_data {{
			path_regexp ^/{routes.BROWSE_DATA_RE}$
			file
		}}
		handle @browse_data {{
{_headers(chr(9) * 3, f'Content-Type "{routes.JSON}"', cc_long, api=False)}			file_server
		}}

		handle {{
{_not_found(chr(9) * 3, routes.ErrorCode.NAME_UNKNOWN)}		}}
	}}
}}
"""
        text = base.framed(head, functools.partial(tag_digest_map, ctx.tag_digests), tail)
        return base.Rendered((base.Output(ctx.hosts_dir / FILENAME, text),), warnings)
