"""The harness's shared state and the command lines of every tool it compares.

``Context`` is handed to each scenario: the running upstream, the pushed data, the run count
and a scratch directory. The ``*_argv``/``write_*`` helpers build what each tool runs on
(registrish config, skopeo sync YAML, curl's parallel config), so scenarios stay short.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testbed.procs import LOOPBACK, Server, free_port
from testbed.statichosts import start_generated
from testbed.upstream import Registry

from registrish_lock.tree.layout import Layout

from .datagen import Data, DataSet, Scale
from .measure import BenchError, RequestCounter, fresh_dir, timed

REPO_ROOT = Path(__file__).resolve().parent.parent
#: registrish is run from the checkout, whatever is installed.
REGISTRISH_ENV = {"PYTHONPATH": str(REPO_ROOT)}
#: The bucket_link scenario's default link rates, each way (bench/bucket_link.py says why).
LINK_RATES = ("1gbit", "500mbit")


@dataclass
class Context:
    registry: Registry
    data: Data
    scale: Scale
    runs: int
    wrk_seconds: float
    work: Path
    counter: RequestCounter
    log: Callable[[str], None] = print
    #: Where the serving scenario measures: "loopback" and/or "veth" (bench/netns.py).
    networks: tuple[str, ...] = ("loopback", "veth")
    #: Extra nginx endpoints for the serving scenario: the generated config plus these
    #: directives (e.g. "sendfile on; tcp_nopush on;"), to measure a setting.
    nginx_variants: tuple[str, ...] = ()
    #: The bucket_link scenario's link rates, each way (`tc` rates: "1gbit", "500mbit").
    link_rates: tuple[str, ...] = LINK_RATES
    _trees: dict[str, SyncedTree] = field(default_factory=dict)

    def dataset(self, name: str) -> DataSet:
        return self.data.sets[name]

    def synced_tree(self, name: str) -> SyncedTree:
        """A tree of set ``name`` locked and synced once per harness run (untimed)."""
        if name not in self._trees:
            ws = Workspace.create(self.work / f"tree-{name}", self.registry, self.dataset(name))
            self.log(f"  preparing a synced tree of '{name}' (untimed)")
            timed(ws.registrish("lock", "-q"), env=REGISTRISH_ENV)
            timed(ws.registrish("sync", "-q"), env=REGISTRISH_ENV)
            self._trees[name] = SyncedTree(ws)
        return self._trees[name]


# -- registrish --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workspace:
    """A directory with ``registrish.toml`` (mirroring one data set) and its tree ``public/``."""

    path: Path
    config: Path
    listen_port: int
    dataset: DataSet

    @staticmethod
    def create(path: Path, registry: Registry, dataset: DataSet) -> Workspace:
        fresh_dir(path)
        port = free_port()
        text = f'[registry]\nroot = "public"\nhosts = ["nginx"]\nlisten = "{LOOPBACK}:{port}"\n\n'
        for repo, tags in dataset.repos.items():
            text += (
                f'[[image]]\nsource = "{registry.host}/{repo}"\nname = "{repo}"\n'
                f"tags = {json.dumps(tags)}\n\n"
            )
        text += f'[registries."{registry.host}"]\ninsecure = true\n'
        config = path / "registrish.toml"
        config.write_text(text)
        return Workspace(path, config, port, dataset)

    @property
    def root(self) -> Path:
        return self.path / "public"

    @property
    def hosts_dir(self) -> Path:
        return self.path / "hosts"

    def registrish(self, command: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "registrish_lock", command, "-c", str(self.config), *args]

    def reset_tree(self) -> None:
        """An empty tree: the root, the host configs and the content store beside the root
        (`Layout.state`: blobs and the sync record live outside the root)."""
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.hosts_dir, ignore_errors=True)
        shutil.rmtree(Layout(self.root).state, ignore_errors=True)

    def check_tree(self) -> None:
        """Every unique blob of the set is in the content store with its size (cheap check;
        digests are verified by sync itself and by the product's tests)."""
        store = Layout(self.root).state / "blobs" / "sha256"
        for blob in self.dataset.blobs:
            path = store / blob.digest.removeprefix("sha256:")
            if not path.exists() or path.stat().st_size != blob.size:
                raise BenchError(f"sync left {blob.digest} missing or truncated in {store}")


@dataclass(frozen=True)
class SyncedTree:
    ws: Workspace


# -- skopeo and curl ---------------------------------------------------------------------------
def write_skopeo_yaml(path: Path, registry: Registry, dataset: DataSet) -> Path:
    """A ``skopeo sync --src yaml`` source naming exactly the set's tags (JSON is YAML)."""
    doc = {registry.host: {"tls-verify": False, "images": dataset.repos}}
    path.write_text(json.dumps(doc, indent=1))
    return path


def skopeo_sync_argv(source_yaml: Path, dest: Path) -> list[str]:
    # --src yaml is --src docker for a list of tags in one process (fairer than one per tag).
    return [
        "skopeo",
        "sync",
        "--all",
        "--src",
        "yaml",
        "--dest",
        "dir",
        str(source_yaml),
        str(dest),
    ]


def write_curl_config(path: Path, registry: Registry, dataset: DataSet, dest: Path) -> Path:
    """One ``url``/``output`` pair per unique blob, for ``curl --parallel -K``."""
    lines = []
    for blob in dataset.blobs:
        url = f"{registry.url}/v2/{blob.repo}/blobs/{blob.digest}"
        lines += [f'url = "{url}"', f'output = "{dest / blob.digest.removeprefix("sha256:")}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def curl_argv(config: Path, parallel: int = 8) -> list[str]:
    return ["curl", "-sSf", "--parallel", "--parallel-max", str(parallel), "-K", str(config)]


def check_curl_dest(dest: Path, dataset: DataSet) -> None:
    for blob in dataset.blobs:
        path = dest / blob.digest.removeprefix("sha256:")
        if not path.exists() or path.stat().st_size != blob.size:
            raise BenchError(f"curl left {blob.digest} missing or truncated")


# -- servers ---------------------------------------------------------------------------------
@contextmanager
def nginx_generated(tree: SyncedTree, tmp: Path) -> Iterator[Server]:
    """nginx running registrish's generated ``registrish.conf`` (1 worker, as bare nginx)."""
    ws = tree.ws
    timed(ws.registrish("hosts", "-q"), env=REGISTRISH_ENV)
    server = start_generated(
        "nginx", ws.hosts_dir, fresh_dir(tmp), port=ws.listen_port, nginx_workers=1
    )
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def registrish_serve(tree: SyncedTree, tmp: Path, address: str = LOOPBACK) -> Iterator[Server]:
    fresh_dir(tmp)
    port = free_port()
    argv: Sequence[str] = [
        *tree.ws.registrish("serve", "-q"),
        *("--root", str(tree.ws.root), "--host", address, "--port", str(port)),
    ]
    url = f"http://{address}:{port}"
    server = Server(
        "registrish-serve", argv, log_dir=tmp, url=url, env=REGISTRISH_ENV, cwd=tree.ws.path
    )
    server.start()
    try:
        server.wait_http(f"{url}/v2/", status=200)
        yield server
    finally:
        server.stop()
