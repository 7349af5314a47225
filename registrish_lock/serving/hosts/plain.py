"""Plain static hosts (GitHub Pages and others that cannot set response headers).

Writes `.nojekyll` (GitHub Pages otherwise hides `_catalog`) and `v2/index.html`
(so the `/v2/` ping answers 200), plus a note in hosts_dir. Pulls still fail: docker,
podman, skopeo and containerd all need each manifest's exact Content-Type.
"""

from __future__ import annotations

from ..routes import PING_DOCUMENT
from .base import GENERATED, HostContext, Output, Rendered

NOTE = "plain-host.txt"
NOTE_TEXT = f"""\
{GENERATED}

This tree is prepared for a plain static host (GitHub Pages and the like): `.nojekyll`
keeps `_catalog` visible and `v2/index.html` answers the `/v2/` ping.

A host that cannot set response headers cannot serve a registry that docker, podman,
skopeo or containerd pull from: every client needs each manifest with its exact media
type as Content-Type (`registrish check URL` shows the failures). Use it as a file
mirror only, or pick nginx, Caddy, Apache, Netlify, Cloudflare Pages (small trees) or
S3/R2 (`registrish publish`).
"""


class PlainRenderer:
    name = "plain"
    needs_entries = False

    def render(self, ctx: HostContext) -> Rendered:
        return Rendered(
            (
                Output(ctx.root / ".nojekyll", b""),
                Output(ctx.root / "v2" / "index.html", PING_DOCUMENT),
                Output(ctx.hosts_dir / NOTE, NOTE_TEXT.encode()),
            ),
            (
                "plain: docker, podman, skopeo and containerd cannot pull from a host that "
                "cannot set Content-Type; see " + str(ctx.hosts_dir / NOTE),
            ),
        )
