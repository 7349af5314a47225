"""Caddy 2: a `Caddyfile` for `caddy run --config Caddyfile --adapter caddyfile`.

Like nginx, its size does not depend on the tree: a `file` matcher per typed-twin
suffix finds the manifest and sets its exact Content-Type. Headers are deferred
because `file_server` clears Content-Type for unknown extensions.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import mediatypes
from ..layout import LAST_PAGE_SUFFIX
from ..routes import (
    BROWSE_REL,
    EMPTY_REFERRERS_REL,
    HTML,
    IMMUTABLE,
    JSON,
    OCTET_STREAM,
    ErrorCode,
    short_cache,
)
from .base import GENERATED, HostContext, Output, Rendered, error_text, twin_kinds

FILENAME = "Caddyfile"
TAG_RE = "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
API = "Docker-Distribution-API-Version registry/2.0"


def _headers(indent: str, *lines: str) -> str:
    body = "".join(f"{indent}\t{line}\n" for line in (*lines, API, "defer"))
    return f"{indent}header {{\n{body}{indent}}}\n"


def _not_found(indent: str, code: ErrorCode) -> str:
    return (
        f"{indent}header Content-Type {JSON}\n"
        f"{indent}header {API}\n"
        f"{indent}respond `{error_text(code)}` 404\n"
    )


def _manifests(prefix: str, extra: tuple[str, ...]) -> str:
    """Inner handles of a manifests route: one per twin kind, then the 404."""
    t = "\t\t\t"
    out = ""
    for kind, media_type in twin_kinds():
        matcher = f"@{prefix}_{kind.replace('-', '_')}"
        out += f"{t}{matcher} file {{path}}.~{kind}\n"
        out += f"{t}handle {matcher} {{\n"
        out += f"{t}\trewrite * {{path}}.~{kind}\n"
        out += _headers(t + "\t", f"Content-Type {media_type}", *extra)
        out += f"{t}\tfile_server\n{t}}}\n"
    out += f"{t}handle {{\n{_not_found(t + chr(9), ErrorCode.MANIFEST_UNKNOWN)}{t}}}\n"
    return out


def tag_digest_map(tags: Sequence[tuple[str, str, str]]) -> str:
    """`name:tag` -> digest, one line per tag (none per digest). Every tag the tree
    serves is in the lock, so every tag answered has its digest."""
    t = "\t\t\t"
    lines = "".join(f"{t}\t{name}:{tag} {digest}\n" for name, tag, digest in tags)
    return f"{t}map {{re.mtag.1}}:{{re.mtag.2}} {{registrish_tag_digest}} {{\n{lines}{t}}}\n"


class CaddyRenderer:
    name = "caddy"
    needs_entries = False

    def render(self, ctx: HostContext) -> Rendered:
        short = short_cache(ctx.policy.tag_cache_seconds)
        cc_short = f'Cache-Control "{short}"'
        cc_long = f'Cache-Control "{IMMUTABLE}"'
        text = f"""\
# {GENERATED}
# The static registry at {ctx.root}, on http://{ctx.listen}/.
# Run: caddy run --config {ctx.hosts_dir / FILENAME} --adapter caddyfile
{{
	admin off
	auto_https off
}}

http://{ctx.listen} {{
	bind {ctx.listen_host}
	root * "{ctx.root}"
	# No `encode`: compression would change the bytes clients verify against digests.

	route {{
		# Never served by name: the state directory, dotfiles and the typed twins.
		@hidden path_regexp hidden (/\\.|\\.~)
		handle @hidden {{
{_not_found(chr(9) * 3, ErrorCode.NAME_UNKNOWN)}		}}

		@ping path /v2 /v2/
		handle @ping {{
			rewrite * /v2/index
{_headers(chr(9) * 3, f"Content-Type {JSON}")}			file_server
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
{_headers(chr(9) * 4, f"Content-Type {JSON}", cc_short)}				file_server
			}}
			@lists_found file
			handle @lists_found {{
{_headers(chr(9) * 4, f"Content-Type {JSON}", cc_short)}				file_server
			}}
			handle {{
{_not_found(chr(9) * 4, ErrorCode.NAME_UNKNOWN)}			}}
		}}

		@mdigest path_regexp mdigest ^/v2/.+/manifests/(sha256:[a-f0-9]{{64}})$
		handle @mdigest {{
{_manifests("mdigest", ("Docker-Content-Digest {re.mdigest.1}", cc_long))}		}}

		@mtag path_regexp mtag ^/v2/(.+)/manifests/({TAG_RE})$
		handle @mtag {{
{tag_digest_map(ctx.tag_digests)}{_manifests("mtag", ("Docker-Content-Digest {registrish_tag_digest}", cc_short))}		}}

		@blob path_regexp blob ^/v2/.+/blobs/(sha256:[a-f0-9]{{64}})$
		handle @blob {{
			@blob_found file
			handle @blob_found {{
{_headers(chr(9) * 4, f"Content-Type {OCTET_STREAM}", "Docker-Content-Digest {re.blob.1}", cc_long)}				file_server
			}}
			handle {{
{_not_found(chr(9) * 4, ErrorCode.BLOB_UNKNOWN)}			}}
		}}

		# Referrers: the stored index, or the empty one for any other digest.
		@referrers path_regexp referrers ^/v2/.+/referrers/sha256:[a-f0-9]{{64}}$
		handle @referrers {{
			@referrers_missing not file
			rewrite @referrers_missing /{EMPTY_REFERRERS_REL}
{_headers(chr(9) * 3, f"Content-Type {mediatypes.OCI_INDEX}", cc_short)}			file_server
		}}

		# The browse page (written by sync) at / and /{BROWSE_REL}.
		@browse path / /{BROWSE_REL}
		handle @browse {{
			@browse_found file /{BROWSE_REL}
			handle @browse_found {{
				rewrite * /{BROWSE_REL}
				header {{
					Content-Type "{HTML}"
					{cc_short}
					defer
				}}
				file_server
			}}
			handle {{
{_not_found(chr(9) * 4, ErrorCode.NAME_UNKNOWN)}			}}
		}}

		handle {{
{_not_found(chr(9) * 3, ErrorCode.NAME_UNKNOWN)}		}}
	}}
}}
"""
        return Rendered((Output(ctx.hosts_dir / FILENAME, text.encode()),))
