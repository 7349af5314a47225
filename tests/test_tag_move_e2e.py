"""A tag moves upstream, `sync` rewrites the tree, and nginx / Caddy / Apache keep serving
with the configs they loaded before: every answer for the tag must be self-consistent
(the Docker-Content-Digest sent, if any, is the digest of the bytes sent, and the
Content-Type is the body's own media type) until the reload the README asks for, after
which the new image is served with its digest. containerd checks the size and digest it
resolved against what it then fetches, so it fails on any mix of old and new."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest
from testbed.clients import Containerd, ctr_pull
from testbed.images import SeededUpstream, skopeo_push
from testbed.procs import LOOPBACK, free_port
from testbed.statichosts import GENERATED_HOSTS, reload_generated, start_generated

from registrish_lock.cli import main
from registrish_lock.lock.lockfile import read_lock
from registrish_lock.oci import mediatypes
from registrish_lock.serving.check import NOT_CONFIGURED, check_url
from registrish_lock.serving.hosts.nginx import OPEN_FILE_CACHE_VALID

pytestmark = pytest.mark.slow


def _served(base: str, ref: str) -> tuple[str, str | None, str]:
    """(digest of the body, Docker-Content-Digest or None, Content-Type) for GET and HEAD of
    one manifest, after checking the two agree and the answer is self-consistent."""
    accept = {"Accept": ", ".join(sorted(mediatypes.MANIFEST_TYPES))}
    get = httpx.get(f"{base}/v2/{ref}", headers=accept, timeout=10)
    head = httpx.head(f"{base}/v2/{ref}", headers=accept, timeout=10)
    assert get.status_code == head.status_code == 200, (get.status_code, head.status_code)
    body = "sha256:" + hashlib.sha256(get.content).hexdigest()
    sent = get.headers.get("docker-content-digest")
    ctype = get.headers["content-type"]
    assert sent in (None, body), f"{ref}: Docker-Content-Digest {sent} for a body of {body}"
    declared = json.loads(get.content).get("mediaType")  # optional in OCI documents
    assert declared in (None, ctype), f"{ref}: {ctype} for a body of type {declared}"
    # HEAD answers for the same file (a client resolves with HEAD, then GETs by digest)
    assert head.headers.get("docker-content-digest") == sent
    assert head.headers["content-type"] == ctype
    assert int(head.headers["content-length"]) == len(get.content)
    return body, sent, ctype


def _config(tmp: Path, upstream: str, name: str, port: int, host: str, tags: list[str]) -> Path:
    config = tmp / "registrish.toml"
    config.write_text(
        f'[registry]\nroot = "public"\nhosts = ["{host}"]\nlisten = "{LOOPBACK}:{port}"\n\n'
        f'[[image]]\nsource = "{upstream}/{name}"\nname = "mv"\ntags = {json.dumps(tags)}\n\n'
        f'[registries."{upstream}"]\ninsecure = true\n'
    )
    return config


@pytest.mark.parametrize("host", GENERATED_HOSTS)
def test_a_moved_tag_is_served_consistently_before_and_after_the_reload(
    host: str, tmp_path: Path, seeded_upstream: SeededUpstream, containerd: Containerd
) -> None:
    registry, layout = seeded_upstream.registry, seeded_upstream.layout
    name = f"mv-{host}"
    skopeo_push(registry, layout.path, layout.amd64_tag, name, "latest")
    skopeo_push(registry, layout.path, layout.arm64_tag, name, "extra")
    port = free_port()
    config = _config(tmp_path, registry.host, name, port, host, ["latest"])
    assert main(["-c", str(config), "lock"]) == 0
    assert main(["-c", str(config), "sync", "-q"]) == 0
    server = start_generated(host, tmp_path / "hosts", tmp_path, port=port)
    base = f"http://{LOOPBACK}:{port}"
    ref = f"{LOOPBACK}:{port}/mv:latest"
    try:
        old, sent, _ = _served(base, "mv/manifests/latest")
        assert sent == old  # the table knows every tag it was loaded with

        # The tag moves to an index (another media type, another size) and a tag is added.
        skopeo_push(registry, layout.path, layout.index_tag, name, "latest", all_platforms=True)
        config = _config(tmp_path, registry.host, name, port, host, ["latest", "extra"])
        assert main(["-c", str(config), "lock", "--upgrade"]) == 0
        assert main(["-c", str(config), "sync", "-q"]) == 0
        new = _upstream_digest(registry.url, name, "latest")
        assert new != old
        if host == "nginx":  # past its open_file_cache validity: it looks files up by name again
            time.sleep(int(OPEN_FILE_CACHE_VALID.removesuffix("s")) + 1)
        # Not reloaded: still the image the host's table names, whole and consistent.
        assert _served(base, "mv/manifests/latest") == (old, old, mediatypes.OCI_MANIFEST)
        assert ctr_pull(containerd, ref).digest == old
        # `check` explains it: the host is behind the tree, not misconfigured
        report = check_url(base, read_lock(tmp_path / "registrish.lock"))
        problems = [f.problem for f in report.failures if f.path.endswith("/manifests/latest")]
        assert problems and all("reload the server after every sync" in p for p in problems)
        assert not any(NOT_CONFIGURED in f.problem for f in report.failures)
        # A tag the table does not know yet is served, with no digest rather than a wrong one.
        _, extra_sent, _ = _served(base, "mv/manifests/extra")
        assert extra_sent is None

        # The old manifest is collected before the reload: the tag file is served then.
        assert main(["-c", str(config), "gc", "-q"]) == 0
        body, _, _ = _served(base, "mv/manifests/latest")
        assert body in (old, new)  # nginx may answer from a cached handle for a few seconds
        assert ctr_pull(containerd, ref).digest in (old, new)

        reload_generated(host, server, tmp_path / "hosts")
        _await_reload(base, "mv/manifests/latest", new)
        assert _served(base, "mv/manifests/latest") == (new, new, mediatypes.OCI_INDEX)
        _, extra_sent, _ = _served(base, "mv/manifests/extra")
        assert extra_sent is not None
        assert ctr_pull(containerd, ref).digest == new
        assert main(["-c", str(config), "check", base, "-q"]) == 0
    finally:
        server.stop()


def _await_reload(base: str, ref: str, digest: str, timeout: float = 20.0) -> None:
    """Until three answers in a row carry `digest`: while nginx and Apache reload, old
    workers may still answer a request or two, so GET and HEAD could meet two configs."""
    deadline, streak = time.monotonic() + timeout, 0
    while streak < 3 and time.monotonic() < deadline:
        r = httpx.head(f"{base}/v2/{ref}", timeout=10)
        streak = streak + 1 if r.headers.get("docker-content-digest") == digest else 0
        time.sleep(0.1)


def _upstream_digest(url: str, name: str, tag: str) -> str:
    accept = {"Accept": ", ".join(sorted(mediatypes.MANIFEST_TYPES))}
    r = httpx.head(f"{url}/v2/{name}/manifests/{tag}", headers=accept, timeout=10)
    r.raise_for_status()
    return r.headers["docker-content-digest"]
