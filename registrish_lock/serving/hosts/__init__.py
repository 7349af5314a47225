"""Host configs rendered from the route table, one module per host behind the
`HostRenderer` Protocol. `write_host_configs` is the I/O step: it gathers the context,
asks each selected renderer for its files, and writes only what changed (atomically).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...console import Console
from ...fsutil import replace_if_changed
from ...lock.config import Config
from ...lock.lockfile import Lock
from ...tls import ServerTls, check_tls_files
from ...tree.layout import Layout
from ..browse_page import render_tree_site, write_site
from ..routes import (
    EMPTY_REFERRERS,
    EMPTY_REFERRERS_REL,
    Entry,
    Policy,
    entries,
    read_objects,
)
from .apache import ApacheRenderer
from .base import HostContext, HostLimitError, HostRenderer, Output, Rendered, TaggedDigest
from .caddy import CaddyRenderer
from .netlify import CloudflareRenderer, NetlifyRenderer
from .nginx import NginxRenderer
from .plain import PlainRenderer
from .s3 import S3Renderer

__all__ = [
    "RENDERERS",
    "HostContext",
    "HostLimitError",
    "HostRenderer",
    "Output",
    "Rendered",
    "render_hosts",
    "write_host_configs",
    "write_if_changed",
]

RENDERERS: dict[str, HostRenderer] = {
    r.name: r
    for r in (
        NginxRenderer(),
        CaddyRenderer(),
        ApacheRenderer(),
        NetlifyRenderer(),
        CloudflareRenderer(),
        S3Renderer(),
        PlainRenderer(),
    )
}


#: The hosts whose configs serve HTTPS themselves (the others bring their own TLS).
TLS_HOSTS = frozenset({"nginx", "caddy", "apache"})


def check_host_tls(config: Config) -> None:
    """The certificate and key the nginx, Caddy or Apache configs will name load, match
    and are private (ConfigError otherwise); `sync` asks before it fetches anything."""
    if any(h in TLS_HOSTS for h in config.hosts):
        check_tls_files(config.path, config.tls)


def make_context(
    *,
    layout: Layout,
    hosts_dir: Path,
    listen_host: str,
    listen_port: int,
    policy: Policy,
    lock: Lock | None,
    hosts: Sequence[str],
    tls: ServerTls | None = None,
) -> HostContext:
    """Everything the renderers read; lists the tree's entries only when one needs them."""
    listed: tuple[Entry, ...] = ()
    if lock is not None and any(RENDERERS[h].needs_entries for h in hosts):
        listed = tuple(entries(read_objects(layout, lock), policy))
    return HostContext(
        root=layout.root.resolve(),
        hosts_dir=hosts_dir.resolve(),
        listen_host=listen_host,
        listen_port=listen_port,
        policy=policy,
        entries=listed,
        tag_digests=tag_digests(lock) if lock is not None else (),
        tls=tls or ServerTls(),
    )


def tag_digests(lock: Lock) -> tuple[TaggedDigest, ...]:
    """Every tag the tree serves: locked tags and cosign tags."""
    served = [TaggedDigest(t.name, t.tag, t.digest, t.media_type) for t in lock.tags]
    cosign: dict[tuple[str, str], TaggedDigest] = {}
    for t in lock.tags:
        for r in t.referrers:
            if r.tag:
                cosign.setdefault(
                    (t.name, r.tag), TaggedDigest(t.name, r.tag, r.digest, r.media_type)
                )
    if cosign:  # only then a (name, tag) set of every locked tag (100,000 tuples at scale)
        locked = {t.key for t in lock.tags}
        served += (v for k, v in cosign.items() if k not in locked)
    return tuple(sorted(served))


def render_hosts(ctx: HostContext, hosts: Sequence[str]) -> list[Rendered]:
    """Pure: every selected host's files (raises `HostLimitError` before anything is
    written when a tree exceeds a host's limits)."""
    return [RENDERERS[h].render(ctx) for h in hosts]


def write_if_changed(path: Path, data: bytes | Output, *, tmp_dir: Path | None = None) -> bool:
    """Write atomically unless `path` already holds exactly `data` (an output's bytes
    compared and written a chunk at a time, never joined). True when written."""
    chunks = data.chunks() if isinstance(data, Output) else (data,)
    return replace_if_changed(path, chunks, tmp_dir=tmp_dir)


def write_host_configs(
    config: Config,
    layout: Layout,
    lock: Lock,
    console: Console,
    *,
    changed: frozenset[str] | None = None,
) -> list[Path]:
    """Regenerate the configs of `config.hosts` (and the tree's empty-referrers
    catch-all that every host config falls back to). Returns the files written; an
    unchanged file is not rewritten. `changed`: only these repositories may differ from
    the last complete sync (the browse page reads only them; `render_tree_site`)."""
    ctx = make_context(
        layout=layout,
        hosts_dir=config.hosts_dir,
        listen_host=config.listen_host,
        listen_port=config.listen_port,
        policy=Policy(tag_cache_seconds=config.tag_cache_seconds),
        lock=lock,
        hosts=config.hosts,
        tls=config.tls,
    )
    check_host_tls(config)
    rendered = render_hosts(ctx, config.hosts)
    outputs = [Output(layout.path(EMPTY_REFERRERS_REL), EMPTY_REFERRERS)]
    for result in rendered:
        outputs.extend(result.outputs)
        for warning in result.warnings:
            console.warn(warning)
    # The browse page is not a host's config but goes with them: always on, each file
    # written only when its content changed.
    written = write_site(layout, render_tree_site(layout, lock, changed=changed))
    for out in outputs:
        in_tree = out.path.resolve().is_relative_to(ctx.root)
        tmp_dir = layout.tmp if in_tree and layout.tmp.is_dir() else None
        if write_if_changed(out.path, out, tmp_dir=tmp_dir):
            written.append(out.path)
            if in_tree:
                console.debug(f"wrote {out.path}")
            else:
                # server configs carry the tag -> digest table: a stale one sends old digests
                console.info(f"updated {out.path}: reload or redeploy that host to apply it")
    return written
