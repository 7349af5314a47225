r"""Netlify and Cloudflare Pages: `_headers` (and `_redirects`) written into the tree root.

These hosts set headers only from per-path rules, so the files grow with the tree:
one rule per manifest path (tag and digest), one splat per repository for blobs and for
referrers. Both also get `v2/index.html` (`PING_DOCUMENT`: the `/v2/` ping, which both serve for a
directory) and a root `404.html` holding an OCI error document: with a browse page at the
root and no `404.html`, Cloudflare Pages answers every missing path 200 with the page, and
clients need a JSON error body either way.

Checked against the hosts' own code (wrangler 4.86's Pages asset server, netlify-cli 26.2's
headers parser):

- A rule path is a pattern. Cloudflare reads `:` followed by a letter anywhere in it as a
  placeholder (`:[A-Za-z]\w*`): `manifests/sha256:f1…` would match every digest. A digest
  path is written `sha256*<hex>` instead: a splat inside a segment (both hosts accept it)
  that can only stand for the colon of a valid digest path.
- Cloudflare joins the values of every rule matching a path, and applies `_redirects`
  before files (no shadowing); Netlify lets the last matching rule win, and rewrites only
  where no file exists. Rules never overlap (checked here).
- Cloudflare cannot promise a Content-Length: it drops it when it compresses (JSON types)
  and on HEAD over HTTP/3 (cloudflare/workerd#6830), and wrangler sends none at all. docker refuses `Docker-Content-Digest` without Content-Length, so Cloudflare
  manifests carry no digest header (optional for docker, podman, skopeo and containerd).

Limits are enforced here:

- Cloudflare Pages: at most 100 `_headers` rules and 2,000 characters a line, 20,000
  files a site and 25 MiB a file. Past that, use R2 (object metadata, like S3).
- Netlify: no rule limit, but it discourages files over 10 MB (warned).

Typed twins stay reachable by name on these hosts (harmless: same bytes).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

from ...lock.lockfile import Lock
from ...tree.layout import Layout
from ..routes import (
    API_VERSION_HEADER,
    BROWSE_DATA_DIR,
    EMPTY_REFERRERS_REL,
    PING_DOCUMENT,
    Entry,
    ErrorCode,
    Kind,
    error_body,
    headers_for,
)
from .base import GENERATED, HostContext, HostLimitError, Output, Rendered

HEADERS = "_headers"
REDIRECTS = "_redirects"
CLOUDFLARE_MAX_RULES = 100
CLOUDFLARE_MAX_LINE = 2000
CLOUDFLARE_MAX_FILES = 20_000
CLOUDFLARE_MAX_FILE_BYTES = 25 * 1024 * 1024
NETLIFY_LARGE_FILE_BYTES = 10 * 1000 * 1000

Rule = tuple[str, tuple[tuple[str, str], ...]]


NOT_FOUND_PAGE = "404.html"
PING_PAGE = "v2/index.html"


def rule_path(path: str) -> str:
    """The `_headers` pattern of one tree path: `sha256:<hex>` as `sha256*<hex>`."""
    return path.replace("/sha256:", "/sha256*")


def rule_matches(pattern: str, path: str) -> bool:
    """Whether a `_headers` pattern registrish writes (literal, or one `*` splat) matches a
    URL path, as both hosts match it."""
    prefix, star, suffix = pattern.partition("*")
    if not star:
        return pattern == path
    return (
        len(path) >= len(prefix) + len(suffix) and path.startswith(prefix) and path.endswith(suffix)
    )


def header_rules(entries: Iterable[Entry], ctx: HostContext, *, digests: bool = True) -> list[Rule]:
    """Rules (URL path pattern, headers) covering every entry with no two overlapping:
    Cloudflare joins the values of overlapping rules, which would corrupt a type.
    `digests=False` leaves Docker-Content-Digest out."""
    policy = ctx.policy
    rules: dict[str, tuple[tuple[str, str], ...]] = {}
    ping = headers_for(Kind.PING, policy=policy)
    for path in ("/v2/", "/v2", "/" + Layout.rel_ping()):
        rules[path] = ping
    rules["/" + EMPTY_REFERRERS_REL] = headers_for(Kind.REFERRERS, policy=policy)
    rules[f"/{BROWSE_DATA_DIR}/*"] = headers_for(Kind.BROWSE_DATA, policy=policy)
    for e in entries:
        if e.kind is Kind.PING:
            continue
        if e.kind is Kind.BLOB:
            name = e.path[len("v2/") : e.path.rindex("/blobs/")]
            rules[f"/v2/{name}/blobs/*"] = headers_for(Kind.BLOB, policy=policy)
        elif e.kind is Kind.REFERRERS:
            name = e.path[len("v2/") : e.path.rindex("/referrers/")]
            rules[f"/v2/{name}/referrers/*"] = headers_for(Kind.REFERRERS, policy=policy)
        elif e.kind in (Kind.MANIFEST_TAG, Kind.MANIFEST_DIGEST):
            rules[rule_path("/" + e.path)] = tuple(
                h for h in e.headers if digests or h[0] != "Docker-Content-Digest"
            )
        else:
            rules["/" + e.path] = e.headers
    splats = [p.partition("*") for p in rules if "*" in p]
    for path in rules:
        for prefix, star, suffix in splats:
            splat = prefix + star + suffix
            if path != splat and rule_matches(splat, path):
                raise HostLimitError(
                    f"_headers: {path} would also match the rule {splat}, and the host would "
                    "join both rules' headers",
                    hint="rename the repository so no name component is 'blobs', "
                    "'referrers' or 'manifests'",
                )
    return sorted(rules.items())


def pages(ctx: HostContext) -> tuple[Output, ...]:
    """`v2/index.html` (the ping) and `404.html` (a JSON error for every missing path)."""
    return (
        Output(ctx.root / PING_PAGE, PING_DOCUMENT),
        Output(ctx.root / NOT_FOUND_PAGE, error_body(ErrorCode.MANIFEST_UNKNOWN)),
    )


def render_headers(rules: list[Rule]) -> Iterator[str]:
    """The `_headers` file's text, a rule at a time (it grows with the tree)."""
    yield f"# {GENERATED}\n"
    for path, headers in rules:
        yield path + "\n" + "".join(f"  {key}: {value}\n" for key, value in headers)


def parse_headers(text: str) -> dict[str, dict[str, str]]:
    """Read a `_headers` file the way Netlify/Cloudflare do (for tests and `check`)."""
    rules: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if not raw[0].isspace():
            current = rules.setdefault(raw.strip(), {})
            continue
        if current is None or ":" not in raw:
            raise ValueError(f"_headers: header line outside a rule: {raw!r}")
        key, _, value = raw.strip().partition(":")
        current[key.strip()] = value.strip()
    return rules


def _large_files(entries: Iterable[Entry], limit: int) -> list[Entry]:
    return [e for e in entries if e.size is not None and e.size > limit]


class NetlifyRenderer:
    name = "netlify"
    needs_entries = True

    def render(self, ctx: HostContext) -> Rendered:
        rules = header_rules(ctx.entries, ctx)
        names = sorted(
            {
                e.path[len("v2/") : e.path.rindex("/referrers/")]
                for e in ctx.entries
                if e.kind is Kind.REFERRERS
            }
        )
        # Netlify rewrites (status 200) only when no file exists at the path ("shadowing"),
        # so stored referrers documents win over the empty catch-all. Its rules files would
        # be served as files: forced (`!`) 404s hide them.
        redirects = [f"# {GENERATED}"]
        redirects += [f"/{f} /{NOT_FOUND_PAGE} 404!" for f in (HEADERS, REDIRECTS)]
        redirects += [f"/v2/{n}/referrers/* /{EMPTY_REFERRERS_REL} 200" for n in names]
        warnings = tuple(
            f"netlify: {e.path} is {e.size} bytes; Netlify discourages files over 10 MB "
            "(consider S3 or R2 behind a CDN for large layers)"
            for e in _large_files(ctx.entries, NETLIFY_LARGE_FILE_BYTES)
        )
        return Rendered(
            (
                Output(ctx.root / HEADERS, functools.partial(render_headers, rules)),
                Output(ctx.root / REDIRECTS, ("\n".join(redirects) + "\n").encode()),
                *pages(ctx),
            ),
            warnings,
        )


def cloudflare_rule_count(lock: Lock) -> int:
    """The `_headers` rules the tree of `lock` needs, from the lock alone: what `sync` checks
    before it writes anything (the renderer checks the tree itself afterwards). Fixed: the
    ping (3 paths), the empty referrers, `_catalog` and the browse data files; per repository: `blobs/*`,
    `referrers/*` and `tags/list`; per tag: its manifest path; per manifest the lock names:
    its digest path (children of a nested index are not named by the lock, so this is a
    lower bound). `tags/<tag>.~last` pages get no rule: hosts that cannot route on the
    query string never serve them."""
    names = {t.name for t in lock.tags}
    digests = {
        (t.name, d)
        for t in lock.tags
        for d in (t.digest, *(p.digest for p in t.platforms), *(r.digest for r in t.referrers))
    }
    return 6 + 3 * len(names) + len(lock.tags) + len(digests)


def cloudflare_preflight(lock: Lock) -> None:
    """Refuse a lock whose tree Cloudflare Pages cannot serve, before `sync` writes a tag
    that the old `_headers` would then serve with the wrong Content-Type."""
    needed = cloudflare_rule_count(lock)
    if needed > CLOUDFLARE_MAX_RULES:
        raise HostLimitError(
            f"cloudflare: the locked images need at least {needed} _headers rules; Cloudflare "
            f"Pages allows {CLOUDFLARE_MAX_RULES} (one per manifest path); nothing was synced",
            hint="use R2 (per-object metadata, like S3: `registrish publish`) behind "
            "Cloudflare instead, or lock fewer tags",
        )


class CloudflareRenderer:
    name = "cloudflare"
    needs_entries = True

    def render(self, ctx: HostContext) -> Rendered:
        rules = header_rules(ctx.entries, ctx, digests=False)
        alternative = (
            "use R2 (per-object metadata, like S3: `registrish publish`) behind Cloudflare instead"
        )
        if len(rules) > CLOUDFLARE_MAX_RULES:
            raise HostLimitError(
                f"cloudflare: the tree needs {len(rules)} _headers rules; Cloudflare Pages "
                f"allows {CLOUDFLARE_MAX_RULES} (one per manifest path)",
                hint=alternative,
            )
        text = "".join(render_headers(rules))  # at most 100 rules
        long = [line for line in text.splitlines() if len(line) > CLOUDFLARE_MAX_LINE]
        if long:
            raise HostLimitError(
                f"cloudflare: a _headers line is {len(long[0])} characters; the limit is "
                f"{CLOUDFLARE_MAX_LINE}",
                hint=alternative,
            )
        files = len(ctx.entries) + sum(
            1 for e in ctx.entries if e.kind in (Kind.MANIFEST_TAG, Kind.MANIFEST_DIGEST)
        )
        if files > CLOUDFLARE_MAX_FILES:
            raise HostLimitError(
                f"cloudflare: the tree has about {files} files; Cloudflare Pages allows "
                f"{CLOUDFLARE_MAX_FILES} a site",
                hint=alternative,
            )
        large = _large_files(ctx.entries, CLOUDFLARE_MAX_FILE_BYTES)
        if large:
            raise HostLimitError(
                f"cloudflare: {large[0].path} is {large[0].size} bytes; Cloudflare Pages "
                "serves files up to 25 MiB",
                hint=alternative,
            )
        # Cloudflare applies _redirects before assets, so a referrers catch-all would
        # hide stored documents; it serves the ping from v2/index.html and never publishes
        # _headers or _redirects: nothing to redirect.
        redirects = f"# {GENERATED}\n"
        return Rendered(
            (
                Output(ctx.root / HEADERS, text.encode()),
                Output(ctx.root / REDIRECTS, redirects.encode()),
                *pages(ctx),
            )
        )


__all__ = ["API_VERSION_HEADER", "CloudflareRenderer", "NetlifyRenderer", "parse_headers"]
