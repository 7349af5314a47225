"""A veth pair into a network namespace the harness creates, uses and removes itself.

Servers listen on the pair's host end; wrk runs inside the namespace against that one
address, so every measured byte crosses a veth (a real network device with its own
queue and offloads) instead of loopback. The only two addresses involved are the pair's,
from 10.231.0.0/16, chosen so they are not in use on this machine. Needs root and `ip`
(iproute2); without them :func:`veth_pair` raises a :class:`BenchError` saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from testbed.procs import own_address

from .measure import BenchError

#: The address block the pairs come from (a /30 each).
BLOCK = "10.231"


@dataclass(frozen=True)
class Veth:
    namespace: str
    host_address: str  # the host end: servers listen here
    ns_address: str  # the namespace's end: wrk's source address

    def inside(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)


def _must(*args: str) -> None:
    proc = _ip(*args)
    if proc.returncode != 0:
        raise BenchError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def _free_subnet(seed: int) -> tuple[str, str]:
    """Two addresses of a /30 in :data:`BLOCK` that no interface here uses yet."""
    used = _ip("-o", "-4", "addr", "show").stdout
    for i in range(16384):
        n = (seed + i) % 16384
        third, fourth = n // 64, n % 64 * 4
        host, peer = f"{BLOCK}.{third}.{fourth + 1}", f"{BLOCK}.{third}.{fourth + 2}"
        if f" {host}/" not in used and f" {peer}/" not in used:
            return host, peer
    raise BenchError(f"no free /30 left in {BLOCK}.0.0/16")


def unavailable() -> str | None:
    """Why a veth pair cannot be made here (None when it can)."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    return None


@contextmanager
def veth_pair() -> Iterator[Veth]:
    """Create namespace + veth pair + addresses; remove them all on exit, even on failure."""
    reason = unavailable()
    if reason is not None:
        raise BenchError(f"the veth variant cannot run: {reason}")
    pid = os.getpid()
    namespace, link, peer = f"registrish-bench-{pid}", f"rb{pid}h", f"rb{pid}n"
    host_address, ns_address = _free_subnet(pid)
    _must("netns", "add", namespace)
    try:
        _must("link", "add", link, "type", "veth", "peer", "name", peer, "netns", namespace)
        _must("addr", "add", f"{host_address}/30", "dev", link)
        _must("link", "set", link, "up")
        _must("-n", namespace, "addr", "add", f"{ns_address}/30", "dev", peer)
        _must("-n", namespace, "link", "set", peer, "up")
        _must("-n", namespace, "link", "set", "lo", "up")
        with own_address(host_address):
            yield Veth(namespace, host_address, ns_address)
    finally:
        _ip("link", "del", link)  # removes the peer too; absent when creation failed early
        _ip("netns", "del", namespace)
