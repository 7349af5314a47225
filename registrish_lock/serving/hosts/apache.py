"""Apache 2.4: a vhost with the rules in its server context, and a `.htaccess` in the
tree root with the same routes in per-directory form, for shared hosting (which has
only that file, so no tag -> digest table).

Manifests are rewritten to their typed twin, whose suffix gives the exact media type.
In the vhost a tag the tag -> digest table names is served from its digest's twin: the
table only changes on a reload while the tree changes on every sync, so body and
Docker-Content-Digest must both come from the table's snapshot. Needs mod_rewrite,
mod_headers, mod_setenvif, mod_mime and mod_dir.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence

from ...oci import mediatypes
from ...tls import CIPHERS
from ...tree.layout import LAST_PAGE_SUFFIX
from .. import routes
from . import base

HTACCESS = ".htaccess"
VHOST = "registrish-apache.conf"
#: `Listen` apart from the vhost: Debian's ports.conf may already listen on the port.
LISTEN = "registrish-apache-listen.conf"
TAG_DIGEST_ENV = "REGISTRISH_TAG_DIGEST"
TAG_KIND_ENV = "REGISTRISH_TAG_KIND"
#: Set by the rewrite that served a tag from its digest's twin: that digest is the body's.
TABLED_ENV = "REGISTRISH_TABLED"
NOT_FOUND_ENV = "REGISTRISH_404"
#: The 405 body, in the tree root: a local ErrorDocument, since a string one comes with
#: Apache's own `Allow` (listing TRACE, or nothing) next to ours.
UNSUPPORTED_DOC = ".registrish-405.json"
_LAST_QUERY = "(?:^|&)last=([A-Za-z0-9_][A-Za-z0-9._-]{0,127})(?:&|$)"
_BROWSE_RE = routes.BROWSE_REL.replace(".", "\\.")  # a regex for the page's name
BROWSE_DATA_ENV = "REGISTRISH_BROWSE_DATA"
_DIGEST_URI = "^/v2/.+/(manifests|blobs)/sha256:[a-f0-9]{64}"
#: As `registrish serve` answers a method other than GET and HEAD.
_UNSUPPORTED = routes.error_body(routes.ErrorCode.UNSUPPORTED)


def tag_digest_table(tags: Sequence[base.TaggedDigest]) -> Iterator[str]:
    """One `SetEnvIf` per tag (none per digest), compiled once at startup: the digest
    and the kind of its typed twin, so a tag costs one file test. A line at a time."""
    for part in base.slices(tags):
        yield "".join(
            [
                f'    SetEnvIf Request_URI "^/v2/{re.escape(name)}/manifests/{re.escape(tag)}$" '
                f"{TAG_DIGEST_ENV}={digest} {TAG_KIND_ENV}={mediatypes.KIND_OF[media_type]}\n"
                for name, tag, digest, media_type in part
            ]
        )


def _quoted(text: str) -> str:
    """`text` inside a double-quoted Apache argument."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _error_document(code: routes.ErrorCode) -> str:
    return f'ErrorDocument 404 "{_quoted(base.error_text(code))}"'


def htaccess(short: str) -> str:
    twins = "".join(
        f"RewriteCond %{{REQUEST_FILENAME}}.~{kind} -f\n"
        f"RewriteRule ^v2/.+/manifests/[^/]+$ $0.~{kind} [END]\n"
        for kind in mediatypes.KINDS
    )
    types = "".join(
        f'<FilesMatch "\\.~{kind}$">\n    ForceType {mt}\n</FilesMatch>\n'
        for kind, mt in base.twin_kinds()
    )
    return f"""\
# {base.GENERATED}
# Static registry rules for Apache 2.4 (mod_rewrite, mod_headers, mod_setenvif, mod_mime,
# mod_dir). The registry must be the site's root: clients only ever ask for /v2/...
Options -Indexes -MultiViews +FollowSymLinks
DirectoryIndex index
DirectorySlash Off

# Compression would change the bytes clients verify against digests.
SetEnvIf Request_URI ^ no-gzip=1 no-brotli=1
SetEnvIf Request_URI "^/v2/.+/(?:manifests|blobs)/(sha256:[a-f0-9]{{64}})" REGISTRISH_DIGEST=$1

RewriteEngine On
RewriteBase /
# Read-only: any other method is refused (405, the JSON error and Allow set below).
RewriteCond %{{REQUEST_METHOD}} !^(?:{"|".join(routes.ALLOWED_METHODS)})$
RewriteRule ^ - [R=405,L]
# The 405 body, only as the error document (the redirect for it is a GET).
RewriteCond %{{ENV:REDIRECT_STATUS}} =405
RewriteRule ^{re.escape(UNSUPPORTED_DOC)}$ - [END]
# Never served by name: the state directory, dotfiles and the typed twins.
RewriteRule (^|/)\\.|\\.~ - [R=404,L]
# The browse page (written by sync) at / and /{routes.BROWSE_REL}.
RewriteRule ^({_BROWSE_RE})?$ {routes.BROWSE_REL} [END]
# Its per-repository data files (named by their content, so cached forever).
RewriteCond %{{REQUEST_FILENAME}} -f
RewriteRule ^{routes.BROWSE_DATA_RE}$ - [END]
RewriteRule !^v2(/|$) - [R=404,L]
RewriteRule ^v2/_referrers-empty$ - [R=404,L]
# The API ping: GET /v2/ -> 200 {{}}.
RewriteRule ^v2/?$ v2/index [END]
# ?last=<tag> -> the page of tags after <tag> that sync wrote (`n` is ignored).
RewriteCond %{{QUERY_STRING}} {_LAST_QUERY}
RewriteCond %{{REQUEST_FILENAME}}::%1 ^(.*/)list::(.+)$
RewriteCond %1%2{LAST_PAGE_SUFFIX} -f
RewriteCond %{{QUERY_STRING}} {_LAST_QUERY}
RewriteRule ^(v2/.+/tags/)list$ $1%1{LAST_PAGE_SUFFIX} [END]
# Manifests: serve a typed twin, whose suffix gives the exact media type. Alone, this
# file has no tag -> digest table (the generated vhost has its own rules), so a tag is
# served from its own twin, with no Docker-Content-Digest.
{twins}RewriteRule ^v2/.+/manifests/ - [R=404,L]
# Referrers: the stored index, or the empty one for any other digest.
RewriteCond %{{REQUEST_FILENAME}} !-f
RewriteRule ^v2/.+/referrers/sha256:[a-f0-9]{{64}}$ {routes.EMPTY_REFERRERS_REL} [END]

{types}<FilesMatch "^sha256:[a-f0-9]{{64}}$">
    ForceType {routes.OCTET_STREAM}
</FilesMatch>
<FilesMatch "^(index|_catalog|list)$|\\{LAST_PAGE_SUFFIX}$">
    ForceType {routes.JSON}
</FilesMatch>
<If "%{{REQUEST_URI}} =~ m#^/({_BROWSE_RE})?$#">
    ForceType "{routes.HTML}"
</If>
<If "%{{REQUEST_URI}} =~ m#^/{routes.BROWSE_DATA_RE}$#">
    ForceType {routes.JSON}
</If>
<If "%{{REQUEST_URI}} =~ m#/referrers/# || %{{REQUEST_URI}} == '/{routes.EMPTY_REFERRERS_REL}'">
    ForceType {mediatypes.OCI_INDEX}
</If>

Header always set {" ".join(routes.API_VERSION_HEADER)}
Header always set Content-Type {routes.JSON} "expr=%{{REQUEST_STATUS}} -in {{'404', '405'}}"
Header always set Allow "{routes.ALLOW}" "expr=%{{REQUEST_STATUS}} == '405'"
ErrorDocument 405 /{UNSUPPORTED_DOC}
# From the name actually served (after the rewrite), so it is always the body's digest.
Header set Docker-Content-Digest %{{REGISTRISH_DIGEST}}e env=REGISTRISH_DIGEST
# Immutable for what was asked for by digest, and the browse page's data files (named by
# their own digest).
<If "%{{REQUEST_URI}} =~ m#{_DIGEST_URI}# || %{{REQUEST_URI}} =~ m#^/{routes.BROWSE_DATA_RE}$#">
    Header set Cache-Control "{routes.IMMUTABLE}"
</If>
<Else>
    Header set Cache-Control "{short}"
</Else>

<If "%{{REQUEST_URI}} =~ m#/manifests/#">
    {_error_document(routes.ErrorCode.MANIFEST_UNKNOWN)}
</If>
<ElseIf "%{{REQUEST_URI}} =~ m#/blobs/#">
    {_error_document(routes.ErrorCode.BLOB_UNKNOWN)}
</ElseIf>
<Else>
    {_error_document(routes.ErrorCode.NAME_UNKNOWN)}
</Else>
"""


def _rule(pattern: str, target: str, *flags: str) -> str:
    return f'    RewriteRule {pattern} {target} "[{",".join(flags)}]"\n'


def server_rules(short: str) -> str:
    """The vhost's routes, in server context: matched before the URL is mapped to a file
    (so a rewrite to a twin costs no internal redirect, as the .htaccess's does), with the
    URL-path's leading slash, files tested under %{DOCUMENT_ROOT}. Types come from the
    rule that matched (`T=`), Cache-Control and the 404 body from variables set before
    the rewrite: no `<If>` or `<FilesMatch>` section to merge on a request."""
    root = "%{DOCUMENT_ROOT}"
    end_json = (f"T={routes.JSON}", "END")
    tabled = "".join(
        f"    RewriteCond %{{ENV:{TAG_KIND_ENV}}} ={kind}\n"
        f"    RewriteCond {root}$1%{{ENV:{TAG_DIGEST_ENV}}}.~{kind} -f\n"
        + _rule(
            "^(/v2/.+/manifests/)[^/]+$",
            f"{root}$1%{{ENV:{TAG_DIGEST_ENV}}}.~{kind}",
            f"T={mt}",
            f"E={TABLED_ENV}:%{{ENV:{TAG_DIGEST_ENV}}}",
            "END",
        )
        for kind, mt in base.twin_kinds()
    )
    twins = "".join(
        f"    RewriteCond {root}$0.~{kind} -f\n"
        + _rule("^/v2/.+/manifests/[^/]+$", f"{root}$0.~{kind}", f"T={mt}", "END")
        for kind, mt in base.twin_kinds()
    )
    not_found = "".join(
        f'    SetEnvIf Request_URI {where} "{NOT_FOUND_ENV}={_quoted(base.error_text(code))}"\n'
        for where, code in (
            ("^", routes.ErrorCode.NAME_UNKNOWN),
            ("/blobs/", routes.ErrorCode.BLOB_UNKNOWN),
            ("/manifests/", routes.ErrorCode.MANIFEST_UNKNOWN),
        )
    )
    return f"""\
    # Compression would change the bytes clients verify against digests.
    SetEnvIf Request_URI ^ no-gzip=1 no-brotli=1
    # The 404 body by what was asked for (the last match wins).
{not_found}    SetEnvIf Request_URI "^/v2/.+/(?:manifests|blobs)/(sha256:[a-f0-9]{{64}})" REGISTRISH_DIGEST=$1
    SetEnvIf Request_URI "^/{routes.BROWSE_DATA_RE}$" {BROWSE_DATA_ENV}=1

    RewriteEngine On
    # Read-only: any other method is refused (405, the JSON error and Allow set below).
    RewriteCond %{{REQUEST_METHOD}} !^(?:{"|".join(routes.ALLOWED_METHODS)})$
    RewriteRule ^ - [R=405]
    # Blobs first, the bulk of all requests. No segment may start with "." or hold "~",
    # so nothing the hidden-name rule below refuses can match here.
{_rule("^/v2/(?:[^/.~][^/~]*/)+blobs/sha256:[a-f0-9]{64}$", "-", f"T={routes.OCTET_STREAM}", "END")}\
    # The 405 body, only as the error document (the redirect for it is a GET).
    RewriteCond %{{ENV:REDIRECT_STATUS}} =405
    RewriteRule ^/{re.escape(UNSUPPORTED_DOC)}$ - [END]
    # Never served by name: the state directory, dotfiles and the typed twins.
    RewriteRule /\\.|\\.~ - [R=404]
    # Manifests: a tag the table above names, from its digest's twin (one file test), so
    # body and Docker-Content-Digest belong to the snapshot the table was loaded with even
    # after a sync moved the tag; else (a newer tag, a collected digest) any ref from its
    # own twin, a tag then with no digest header.
{tabled}{twins}    RewriteRule ^/v2/.+/manifests/ - [R=404]
    # The API ping: GET /v2/ -> 200 {{}}.
{_rule("^/v2/?$", f"{root}/v2/index", *end_json)}\
    # ?last=<tag> -> the page of tags after <tag> that sync wrote (`n` is ignored).
    RewriteCond %{{QUERY_STRING}} {_LAST_QUERY}
    RewriteCond {root}$1%1{LAST_PAGE_SUFFIX} -f
{_rule("^(/v2/.+/tags/)list$", f"{root}$1%1{LAST_PAGE_SUFFIX}", *end_json)}\
{_rule("^/v2/(?:_catalog|.+/tags/list)$", "-", *end_json)}\
    # Referrers: the stored index, or the empty one for any other digest.
    RewriteCond {root}$0 !-f
{_rule("^/v2/.+/referrers/sha256:[a-f0-9]{64}$", f"{root}/{routes.EMPTY_REFERRERS_REL}", f"T={mediatypes.OCI_INDEX}", "END")}\
{_rule("^/v2/.+/referrers/sha256:[a-f0-9]{64}$", "-", f"T={mediatypes.OCI_INDEX}", "END")}\
    # The browse page (written by sync) at / and /{routes.BROWSE_REL}.
{_rule(f"^/(?:{_BROWSE_RE})?$", f"{root}/{routes.BROWSE_REL}", f"T={routes.HTML}", "END")}\
    # Its per-repository data files, named by their own digest (so immutable, below).
{_rule(f"^/{routes.BROWSE_DATA_RE}$", "-", f"T={routes.JSON}", "END")}\
    RewriteRule ^ - [R=404]

    Header always set {" ".join(routes.API_VERSION_HEADER)}
    Header always set Content-Type {routes.JSON} "expr=%{{REQUEST_STATUS}} -in {{'404', '405'}}"
    Header always set Allow "{routes.ALLOW}" "expr=%{{REQUEST_STATUS}} == '405'"
    ErrorDocument 405 /{UNSUPPORTED_DOC}
    ErrorDocument 404 "%{{reqenv:{NOT_FOUND_ENV}}}"
    Header set Docker-Content-Digest %{{REGISTRISH_DIGEST}}e env=REGISTRISH_DIGEST
    Header set Docker-Content-Digest %{{{TABLED_ENV}}}e env={TABLED_ENV}
    # Immutable for what was asked for by digest, short for the rest (tags included).
    Header set Cache-Control "{routes.IMMUTABLE}" env=REGISTRISH_DIGEST
    Header set Cache-Control "{short}" env=!REGISTRISH_DIGEST
    Header set Cache-Control "{routes.IMMUTABLE}" env={BROWSE_DATA_ENV}
"""


def _vhost_tls(ctx: base.HostContext) -> str:
    """mod_ssl settings of the registry's vhost (its name alone for plain HTTP)."""
    name = f"    ServerName {ctx.tls.server_name}\n" if ctx.tls.server_name else ""
    if ctx.tls.certificate is None or ctx.tls.key is None:
        return name
    return f"""{name}    # HTTPS (mod_ssl; HTTP/2 where mod_http2 is loaded): TLS 1.2 and 1.3 only; for
    # TLS 1.2, only AEAD suites with forward secrecy (TLS 1.3's are all strong).
    SSLEngine on
    SSLCertificateFile "{ctx.tls.certificate}"
    SSLCertificateKeyFile "{ctx.tls.key}"
    SSLProtocol -all +TLSv1.2 +TLSv1.3
    SSLCipherSuite {CIPHERS}
    SSLHonorCipherOrder off
    SSLSessionTickets off
    <IfModule http2_module>
        Protocols h2 http/1.1
    </IfModule>
"""


def _redirect_vhost(ctx: base.HostContext) -> str:
    """`[registry] redirect_http`: a plain-HTTP vhost sending every request to HTTPS."""
    redirect = ctx.tls.redirect_http
    if redirect is None or not ctx.tls.own_certificate:
        return ""
    return f"""# Plain HTTP on {redirect}: every request is redirected to HTTPS.
<VirtualHost {redirect}>
    RewriteEngine On
    RewriteRule ^ {ctx.https_url("%{SERVER_NAME}")}%{{REQUEST_URI}} [R=308,L]
</VirtualHost>
"""


class ApacheRenderer:
    name = "apache"
    needs_entries = False

    def render(self, ctx: base.HostContext) -> base.Rendered:
        short = routes.short_cache(ctx.policy.tag_cache_seconds)
        scheme = "https" if ctx.tls.own_certificate else "http"
        head = f"""\
# {base.GENERATED}
# The static registry at {ctx.root}, on {scheme}://{ctx.listen}/.
# Include it from apache2.conf, plus {LISTEN} unless ports.conf already listens on
# {ctx.listen}. The rules are in server context with AllowOverride None, so
# {ctx.root / HTACCESS} (for shared hosting) is not read. Through that per-directory
# file (read per request, or included once) a manifest cost an internal redirect and
# every request <If> merges: 10-30% more CPU per request than these rules (BENCHMARKS.md).
# EnableSendfile stays as your server config has it (Apache's default: Off): measured
# against a bare Apache (BENCHMARKS.md, `serving`), blobs from 3 MiB leave this vhost at
# 0.97-1.07x of it on loopback and over a veth pair. On a real network card sendfile saves
# a copy of every byte: measure your own link (wrk on a blob) before you turn it on.
# Reload Apache after each sync: until then a tag keeps serving the image the table below
# names (or, for a tag it does not know or whose manifest was collected, the tag's file
# with no Docker-Content-Digest).
{_redirect_vhost(ctx)}<VirtualHost {ctx.listen}>
{_vhost_tls(ctx)}    DocumentRoot "{ctx.root}"
    # TRACE is answered before any rewrite: refuse it like any other write.
    TraceEnable off
"""
        tail = f"""{server_rules(short)}    <Directory "{ctx.root}">
        Require all granted
        AllowOverride None
        Options -Indexes -MultiViews +FollowSymLinks
    </Directory>
</VirtualHost>
"""
        vhost = base.framed(head, functools.partial(tag_digest_table, ctx.tag_digests), tail)
        listen = f"# {base.GENERATED}\n# Apache's Listen for the registrish vhost (skip it if ports.conf has it).\n"
        listen += f"Listen {ctx.listen}{' https' if ctx.tls.own_certificate else ''}\n"
        if ctx.tls.redirect_http is not None and ctx.tls.own_certificate:
            listen += f"Listen {ctx.tls.redirect_http}\n"
        return base.Rendered(
            (
                base.Output(ctx.hosts_dir / VHOST, vhost),
                base.Output(ctx.hosts_dir / LISTEN, listen.encode()),
                base.Output(ctx.root / HTACCESS, htaccess(short).encode()),
                base.Output(ctx.root / UNSUPPORTED_DOC, _UNSUPPORTED),
            ),
            base.plain_http_warning(ctx, "apache"),
        )
