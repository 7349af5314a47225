"""The pulls every host must serve: skopeo, podman, containerd and the Docker engine pull
the four manifest kinds by tag and by digest, and `registrish check --deep` passes.

These are test functions: a test module imports them (and lists them in `__all__`) to have
them collected there, run with that module's `host` (`127.0.0.1:PORT`) and `tree`
(`support.trees.BuiltTree`) fixtures — test_hosts_e2e.py and test_vendor_hosts_e2e.py."""

from __future__ import annotations

from pathlib import Path

from testbed.clients import Containerd, Dockerd, ctr_pull, docker_pull, podman_pull, skopeo_copy

from registrish_lock.serving.check import check_url
from support.trees import BuiltTree

KINDS = ("app-oci:v1", "app-docker:v1", "multi:v1", "multi-docker:v1")


def _refs(tree: BuiltTree, host: str) -> list[tuple[str, str]]:
    """(reference, root digest) for each kind, by tag and by digest."""
    refs = []
    for key in KINDS:
        name, tag = key.split(":")
        digest = tree.refs[key][0]
        refs += [(f"{host}/{name}:{tag}", digest), (f"{host}/{name}@{digest}", digest)]
    return refs


def test_check_passes(host: str, tree: BuiltTree) -> None:
    report = check_url(f"http://{host}", tree.lock, deep=True)
    assert report.failures == []


def test_skopeo(host: str, tree: BuiltTree, tmp_path: Path) -> None:
    for i, (ref, digest) in enumerate(_refs(tree, host)):
        result = skopeo_copy(ref, tmp_path / f"s{i}", all_platforms=True)
        assert result.digest == digest, ref


def test_podman(host: str, tree: BuiltTree, tmp_path: Path) -> None:
    for ref, digest in _refs(tree, host):
        result = podman_pull(ref, tmp_path)
        assert result.digest == digest, ref


def test_containerd(host: str, tree: BuiltTree, containerd: Containerd) -> None:
    for ref, digest in _refs(tree, host):
        result = ctr_pull(containerd, ref)
        assert result.digest == digest, ref


def test_docker(host: str, tree: BuiltTree, dockerd: Dockerd) -> None:
    for ref, digest in _refs(tree, host):
        result = docker_pull(dockerd, ref)
        assert result.digest == digest, ref
