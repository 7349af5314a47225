"""Host configs for a built tree (`support.trees`): a render context, the generated
configs written for one host, and that host started on a free loopback port."""

from __future__ import annotations

from pathlib import Path

from testbed.procs import LOOPBACK, Server, free_port
from testbed.registrish import start_registrish_serve
from testbed.statichosts import start_generated

from registrish_lock.lock.lockfile import Lock
from registrish_lock.serving.hosts import make_context, render_hosts, write_if_changed
from registrish_lock.serving.hosts.base import HostContext, Rendered
from registrish_lock.serving.routes import Policy
from support.trees import BuiltTree


def context_for(
    tree: BuiltTree,
    tmp_path: Path,
    *hosts: str,
    policy: Policy | None = None,
    lock: Lock | None = None,
) -> HostContext:
    """A render context over `tree` for `hosts`, listening on 127.0.0.1:80."""
    return make_context(
        layout=tree.layout,
        hosts_dir=tmp_path / "h",
        listen_host="127.0.0.1",
        listen_port=80,
        policy=policy or Policy(),
        lock=lock or tree.lock,
        hosts=hosts,
    )


def render_host(tree: BuiltTree, host: str, hosts_dir: Path, port: int) -> Rendered:
    """Write `host`'s generated configs for `tree`, listening on 127.0.0.1:`port`."""
    ctx = make_context(
        layout=tree.layout,
        hosts_dir=hosts_dir,
        listen_host=LOOPBACK,
        listen_port=port,
        policy=Policy(),
        lock=tree.lock,
        hosts=(host,),
    )
    (rendered,) = render_hosts(ctx, (host,))
    for out in rendered.outputs:
        write_if_changed(out.path, out.data)
    return rendered


def start_host(host: str, tree: BuiltTree, tmp: Path) -> Server:
    """`registrish serve` or a web server with its generated config, serving `tree` on a
    free loopback port; the caller stops it."""
    port = free_port()
    hosts_dir = tmp / "hosts"
    if host == "serve":
        return start_registrish_serve(log_dir=tmp, root=tree.layout.root, name="serve").server
    render_host(tree, host, hosts_dir, port)
    return start_generated(host, hosts_dir, tmp, port=port)
