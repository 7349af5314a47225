"""Real pull clients: skopeo, podman, containerd's ctr and the Docker engine.

Each pull returns the digest(s) the client ended up with, or raises
:class:`~testbed.procs.CommandError` carrying the client's stderr. References are
``HOST:PORT/name:tag`` or ``HOST:PORT/name@sha256:…`` (plain HTTP, loopback only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import CommandError, Server, require_binary, run, short_tmpdir


def _strip_transport(ref: str) -> str:
    return ref.removeprefix("docker://")


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# -- skopeo ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SkopeoResult:
    """What ``skopeo copy`` wrote.

    ``digest`` is the digest of the root manifest as stored at the destination. With the
    default ``dir:`` transport the manifest is kept byte-for-byte, so it equals the source's
    digest for every kind (OCI/v2s2 manifest, index, list). With ``oci:`` skopeo *converts*
    v2s2 to OCI (a different digest) — only then does it differ.
    ``instances`` are the per-platform manifest digests stored (``--all`` copies).
    """

    digest: str
    media_type: str
    dest: Path
    instances: tuple[str, ...]


def skopeo_copy(
    ref: str,
    dest_dir: Path,
    *,
    all_platforms: bool = False,
    arch: str | None = None,
    transport: str = "dir",
    cert_dir: Path | None = None,
    timeout: float = 300.0,
) -> SkopeoResult:
    """``skopeo copy --src-tls-verify=false docker://REF dir:DEST`` (or ``oci:DEST:pulled``).

    Without ``all_platforms`` an index resolves to the host platform (or ``arch``). skopeo
    sends ``GET /v2/`` first and never ``HEAD``s manifests. With ``cert_dir``: HTTPS only,
    verified against the CAs (``*.crt``) in that directory (``--src-cert-dir``).
    """
    skopeo = require_binary("skopeo")
    if transport not in ("dir", "oci"):
        raise ValueError("transport is 'dir' or 'oci'")
    if dest_dir.exists() and any(dest_dir.iterdir()):
        raise ValueError(f"{dest_dir} is not empty")
    argv = [skopeo, "copy", "-q", *_tls_flags("--src-", cert_dir)]
    if all_platforms:
        argv.append("--all")
    if arch is not None:
        argv += ["--override-arch", arch]
    dest = f"dir:{dest_dir}" if transport == "dir" else f"oci:{dest_dir}:pulled"
    run([*argv, f"docker://{_strip_transport(ref)}", dest], timeout=timeout, what="skopeo copy")
    if transport == "dir":
        return read_dir_copy(dest_dir)
    return read_oci_layout(dest_dir, "pulled")


def _tls_flags(prefix: str, cert_dir: Path | None) -> list[str]:
    """containers/image's flags: verified HTTPS with `cert_dir`'s CAs, else no verification
    (and plain HTTP allowed)."""
    if cert_dir is None:
        return [f"{prefix}tls-verify=false"]
    return [f"{prefix}tls-verify=true", f"{prefix}cert-dir", str(cert_dir)]


def read_dir_copy(dest_dir: Path) -> SkopeoResult:
    """Digest readback from a ``dir:`` copy (``manifest.json`` + ``<digest>.manifest.json``)."""
    manifest = dest_dir / "manifest.json"
    doc = json.loads(manifest.read_text())
    instances = tuple(
        sorted("sha256:" + p.name.split(".")[0] for p in dest_dir.glob("*.manifest.json"))
    )
    _verify_blobs_dir(dest_dir, doc)
    return SkopeoResult(_sha256(manifest), doc.get("mediaType", ""), dest_dir, instances)


def _verify_blobs_dir(dest_dir: Path, doc: dict[str, Any]) -> None:
    """Every blob a single manifest names is present with the right digest."""
    if "layers" not in doc:
        return
    for d in [doc["config"], *doc["layers"]]:
        digest: str = d["digest"]
        path = dest_dir / digest.split(":")[1]
        if not path.exists() or _sha256(path) != digest:
            raise AssertionError(f"skopeo dir copy: blob {digest} missing or corrupt")


def read_oci_layout(layout: Path, tag: str | None = None) -> SkopeoResult:
    """Digest readback from an OCI layout's ``index.json`` (the tagged or only manifest)."""
    index = json.loads((layout / "index.json").read_text())
    descs = index["manifests"]
    if tag is not None:
        descs = [
            d
            for d in descs
            if d.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        ]
    if len(descs) != 1:
        raise AssertionError(f"{layout}: expected one manifest for {tag!r}, got {len(descs)}")
    desc = descs[0]
    blob = layout / "blobs" / "sha256" / desc["digest"].split(":")[1]
    if _sha256(blob) != desc["digest"]:
        raise AssertionError(f"{layout}: manifest blob does not match {desc['digest']}")
    doc = json.loads(blob.read_text())
    instances = tuple(m["digest"] for m in doc.get("manifests", []))
    return SkopeoResult(desc["digest"], desc["mediaType"], layout, instances)


# -- podman ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodmanResult:
    image_id: str
    #: The digest podman records for the pulled reference (the root manifest's digest).
    digest: str
    repo_digests: tuple[str, ...]


def podman_pull(
    ref: str,
    tmp: Path,
    *,
    arch: str | None = None,
    cert_dir: Path | None = None,
    timeout: float = 300.0,
) -> PodmanResult:
    """``podman --root TMP/root --runroot /tmp/rr-XXXX --storage-driver vfs pull --tls-verify=false``.

    A fresh storage root per call, so every blob is really fetched. ``--runroot`` must be at
    most 50 characters: it lives in a short ``/tmp/rr-*`` dir, removed afterwards.
    ``podman run`` fails in this sandbox (setrlimit); pulls work. ``cert_dir``: as for
    :func:`skopeo_copy` (``--cert-dir``).
    """
    podman = require_binary("podman")
    root = tmp / f"podman-{uuid.uuid4().hex[:8]}"
    runroot = short_tmpdir("rr-")
    base = [
        podman,
        "--root",
        str(root),
        "--runroot",
        str(runroot),
        # libpod's state dir defaults to the shared /run/libpod: concurrent podmans (another
        # test run on the machine) then fail with "creating runtime status file".
        "--tmpdir",
        str(runroot / "libpod"),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "none",
    ]
    env = {"REGISTRIES_CONFIG_PATH": "/dev/null"}
    try:
        pull = [*base, "pull", "-q", *_tls_flags("--", cert_dir)]
        if arch is not None:
            pull += ["--arch", arch]
        out = run([*pull, _strip_transport(ref)], timeout=timeout, env=env, what="podman pull")
        image_id = out.stdout.strip().splitlines()[-1]
        fmt = "{{json .}}"
        info = run([*base, "image", "inspect", "--format", fmt, image_id], env=env).stdout
        doc = json.loads(info)
        if isinstance(doc, list):  # podman 4.3 wraps even a formatted single image in a list
            doc = doc[0]
        return PodmanResult(
            image_id=image_id,
            digest=doc.get("Digest", ""),
            repo_digests=tuple(doc.get("RepoDigests") or ()),
        )
    finally:
        with contextlib.suppress(CommandError):
            run([*base, "system", "reset", "-f"], timeout=60, env=env)
        shutil.rmtree(runroot, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


# -- containerd -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Containerd:
    """A running ``containerd`` with everything under ``root_dir`` (a short /tmp path)."""

    socket: Path
    root_dir: Path
    server: Server

    def pull(self, ref: str, *, platform: str | None = None) -> CtrResult:
        """Shortcut for :func:`ctr_pull`."""
        return ctr_pull(self, ref, platform=platform)


def write_containerd_config(base: Path) -> Path:
    """Config with root/state/grpc/ttrpc under ``base``, CRI disabled, isolated content.

    ``content_sharing_policy = "isolated"`` makes every namespace fetch its own blobs; with the
    default ("shared") a pull in a fresh namespace silently reuses blobs that another
    namespace fetched earlier, so a second host would never be asked for them.
    """
    conf = base / "containerd.toml"
    conf.write_text(
        f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
"""
    )
    return conf


def start_containerd(base: Path, *, timeout: float = 30.0) -> Containerd:
    """Start ``containerd --config BASE/containerd.toml``; ready when the gRPC socket accepts."""
    containerd = require_binary("containerd")
    require_binary("ctr")
    base.mkdir(parents=True, exist_ok=True)
    conf = write_containerd_config(base)
    server = Server("containerd", [containerd, "--config", str(conf)], log_dir=base).start()
    sock = base / "containerd.sock"
    server.wait_unix(sock, timeout=timeout)
    return Containerd(socket=sock, root_dir=base, server=server)


@dataclass(frozen=True)
class CtrResult:
    namespace: str
    #: The digest of the image's target (the root manifest or index).
    digest: str
    media_type: str
    check: str


def ctr_pull(
    containerd: Containerd,
    ref: str,
    *,
    platform: str | None = None,
    hosts_dir: Path | None = None,
    timeout: float = 300.0,
) -> CtrResult:
    """``ctr -n NS images pull --plain-http REF`` in a fresh namespace, then ``images check``.
    With ``hosts_dir``: ``--hosts-dir DIR`` instead (HTTPS as its ``hosts.toml`` says).

    Exit 0 is not enough: every blob of the selected platform must be in the content store
    (checked with ``ctr content ls``/``content get``) and, for the host platform, ``ctr images
    check`` must report ``complete`` (it only knows the host platform and exits 1 "unable to
    check unpack" for an arm64-only pull). containerd never asks ``/v2/``; it resolves with
    ``HEAD`` (falling back to ``GET``).
    """
    ctr = require_binary("ctr")
    ns = f"t{uuid.uuid4().hex[:12]}"
    base = [ctr, "-a", str(containerd.socket), "-n", ns]
    argv = [*base, "images", "pull"]
    argv += ["--plain-http"] if hosts_dir is None else ["--hosts-dir", str(hosts_dir)]
    if platform is not None:
        argv += ["--platform", platform]
    ref = _strip_transport(ref)
    run([*argv, ref], timeout=timeout, what="ctr pull")
    listing = run([*base, "images", "ls"]).stdout
    rows = [line.split() for line in listing.splitlines()[1:] if line.strip()]
    row = next((r for r in rows if r[0] == ref), None)
    if row is None:
        raise AssertionError(f"ctr images ls has no {ref}:\n{listing}")
    media_type, digest = row[1], row[2]
    _ctr_assert_content(base, digest, platform or "linux/amd64")
    status = ""
    if platform is None or platform == "linux/amd64":
        # `images check` looks at the host platform only (other platforms fail to "unpack")
        check = run([*base, "images", "check"]).stdout
        status = next((line for line in check.splitlines() if line.startswith(ref + " ")), "")
        if not re.search(r"\scomplete\s*\(", status):
            raise AssertionError(f"ctr images check: {ref} is not complete:\n{check}")
    return CtrResult(namespace=ns, digest=digest, media_type=media_type, check=status)


def _ctr_assert_content(base: list[str], root: str, platform: str) -> None:
    """Every blob of ``root`` (for ``platform`` when it is an index) is in the content store."""
    present = set(run([*base, "content", "ls", "-q"]).stdout.split())

    def need(digest: str) -> None:
        if digest not in present:
            raise AssertionError(f"ctr: {digest} missing from the content store")

    need(root)
    doc = json.loads(run([*base, "content", "get", root]).stdout)
    if "manifests" in doc:
        os_, _, arch = platform.partition("/")
        arch = arch.split("/")[0]
        chosen = [
            m["digest"]
            for m in doc["manifests"]
            if m.get("platform", {}).get("os") == os_
            and m.get("platform", {}).get("architecture") == arch
        ]
        if not chosen:
            raise AssertionError(f"ctr: {root} has no {platform} manifest")
        need(chosen[0])
        doc = json.loads(run([*base, "content", "get", chosen[0]]).stdout)
    for d in [doc["config"], *doc["layers"]]:
        need(d["digest"])


# -- Docker engine --------------------------------------------------------------------------
@dataclass(frozen=True)
class Dockerd:
    """A running ``dockerd`` on ``socket`` using our own :class:`Containerd`."""

    socket: Path
    root_dir: Path
    cli_config: Path
    server: Server

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def pull(self, ref: str, *, fresh: bool = True, platform: str | None = None) -> DockerResult:
        """Shortcut for :func:`docker_pull`."""
        return docker_pull(self, ref, fresh=fresh, platform=platform)

    def run(self, ref: str, *args: str) -> str:
        """Shortcut for :func:`docker_run`."""
        return docker_run(self, ref, *args)


def start_dockerd(base: Path, containerd: Containerd, *, timeout: float = 60.0) -> Dockerd:
    """``dockerd`` with data/exec roots, pidfile and socket under ``base`` (a short path).

    Networking is off (``--bridge=none --iptables=false --ip6tables=false --ip-masq=false``)
    and ``--config-file`` points at our own daemon.json so /etc/docker/daemon.json is never
    read; it sets ``deprecated-key-path`` (no such flag) so dockerd 20.10 does not write
    /etc/docker/key.json.
    containerd's shims still put their sockets under /run/containerd/s (hard-coded).
    127.0.0.0/8 is an insecure registry by default, so plain-HTTP pulls from loopback work.
    """
    dockerd = require_binary("dockerd")
    require_binary("docker")
    base.mkdir(parents=True, exist_ok=True)
    daemon_json = base / "daemon.json"
    # 20.10 writes a libtrust key to /etc/docker/key.json unless told where (config-file only)
    daemon_json.write_text(json.dumps({"deprecated-key-path": str(base / "key.json")}))
    sock = base / "docker.sock"
    argv = [
        dockerd,
        "--config-file",
        str(daemon_json),
        "--data-root",
        str(base / "d"),
        "--exec-root",
        str(base / "x"),
        "--pidfile",
        str(base / "docker.pid"),
        "-H",
        f"unix://{sock}",
        "--containerd",
        str(containerd.socket),
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--ip-masq=false",
    ]
    server = Server("dockerd", argv, log_dir=base).start()
    server.wait_unix(sock, timeout=timeout)
    cli = base / "cli"
    cli.mkdir(exist_ok=True)
    (cli / "config.json").write_text("{}")
    d = Dockerd(socket=sock, root_dir=base, cli_config=cli, server=server)
    # the socket accepts before the API is up: wait for `docker version`
    _docker(d, "version", timeout=timeout)
    return d


def _docker(d: Dockerd, *args: str, timeout: float = 300.0) -> str:
    docker = require_binary("docker")
    env = {"DOCKER_CONFIG": str(d.cli_config), "DOCKER_CLI_HINTS": "false"}
    argv = [docker, "-H", d.host, *args]
    return run(argv, timeout=timeout, env=env, what=f"docker {args[0]}").stdout


def docker_reset(d: Dockerd) -> None:
    """Remove every image (and stopped container) so the next pull fetches every layer."""
    for cid in _docker(d, "ps", "-aq").split():
        _docker(d, "rm", "-f", cid)
    ids = _docker(d, "images", "-aq").split()
    if ids:
        _docker(d, "rmi", "-f", *sorted(set(ids)))


@dataclass(frozen=True)
class DockerResult:
    image_id: str
    #: ``HOST/NAME@sha256:…`` entries; for a pull by tag this is the root (list/index) digest.
    repo_digests: tuple[str, ...]

    @property
    def digest(self) -> str:
        """The digest part of the first RepoDigest."""
        return self.repo_digests[0].rsplit("@", 1)[1] if self.repo_digests else ""


def docker_pull(
    d: Dockerd, ref: str, *, fresh: bool = True, platform: str | None = None
) -> DockerResult:
    """``docker pull REF``; ``fresh`` first removes every image so all layers are fetched."""
    ref = _strip_transport(ref)
    if fresh:
        docker_reset(d)
    args = ["pull", "-q"]
    if platform is not None:
        args += ["--platform", platform]
    _docker(d, *args, ref)
    doc = json.loads(_docker(d, "image", "inspect", ref))[0]
    return DockerResult(image_id=doc["Id"], repo_digests=tuple(doc.get("RepoDigests") or ()))


def docker_run(d: Dockerd, ref: str, *args: str, timeout: float = 120.0) -> str:
    """``docker run --rm --network none REF ARGS…``; returns stdout."""
    return _docker(
        d, "run", "--rm", "--network", "none", _strip_transport(ref), *args, timeout=timeout
    )
