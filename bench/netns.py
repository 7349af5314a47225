"""A veth pair into a network namespace the harness creates, uses and removes itself.

Servers listen on the pair's host end; wrk runs inside the namespace against that one
address, so every measured byte crosses a veth (a real network device with its own
queue and offloads) instead of loopback. The only two addresses involved are the pair's,
from 10.231.0.0/16, chosen so they are not in use on this machine. Needs root and `ip`
(iproute2); without them :func:`veth_pair` raises a :class:`BenchError` saying so.

:func:`shaped` bounds the pair's rate each way with a token bucket (`tc qdisc … tbf`) on
the egress of both ends; it needs `tc` (iproute2 too) and removes its qdiscs on exit.
"""

from __future__ import annotations

import os
import re
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
    host_link: str  # the host end's device
    ns_link: str  # the namespace end's device (inside `namespace`)

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
            yield Veth(namespace, host_address, ns_address, link, peer)
    finally:
        _ip("link", "del", link)  # removes the peer too; absent when creation failed early
        _ip("netns", "del", namespace)


# -- shaping -----------------------------------------------------------------------------------
_RATE = re.compile(r"(\d+(?:\.\d+)?)([kmg]?)bit")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_rate(text: str) -> int:
    """Bits per second of a `tc` rate such as ``1gbit`` or ``500mbit`` (decimal units, as
    `tc` reads them); ValueError for anything else."""
    m = _RATE.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"not a rate like 1gbit or 500mbit: {text!r}")
    bits = int(float(m[1]) * _SCALE[m[2]])
    if bits <= 0:
        raise ValueError(f"a rate must be positive: {text!r}")
    return bits


def rate_label(text: str) -> str:
    """``1gbit`` -> ``1 Gbit/s``, ``500mbit`` -> ``500 Mbit/s``."""
    bits = parse_rate(text)
    for unit, scale in (("Gbit/s", 10**9), ("Mbit/s", 10**6), ("kbit/s", 10**3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits} bit/s"


#: The token bucket's depth: above a 64 KiB GSO packet (tbf splits larger ones), and at
#: 1 Gbit/s about 2 ms of line rate, so no burst moves a measurable share of a transfer.
TBF_BURST = "256kb"
#: How long a packet may wait in the bucket's queue before it is dropped (sets its length).
TBF_LATENCY = "50ms"


def _tc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tc", *args], capture_output=True, text=True, check=False, timeout=30)


@dataclass(frozen=True)
class Shaping:
    veth: Veth
    rate: str

    def devices(self) -> dict[str, tuple[list[str], str]]:
        """Per direction, the device whose egress it leaves by (and `tc`'s namespace option)."""
        return {
            "host→namespace": ([], self.veth.host_link),
            "namespace→host": (["-n", self.veth.namespace], self.veth.ns_link),
        }

    def counters(self) -> dict[str, Counters]:
        """Per direction, tbf's counters so far (`tc -s qdisc show`)."""
        out = {}
        for direction, (netns, dev) in self.devices().items():
            text = _tc(*netns, "-s", "qdisc", "show", "dev", dev, "root").stdout
            m = _COUNTERS.search(text)
            if "tbf" not in text or m is None:
                raise BenchError(f"no tbf qdisc on {dev}: {text.strip()!r}")
            out[direction] = Counters(int(m["sent"]), int(m["dropped"]), int(m["overlimits"]))
        return out


_COUNTERS = re.compile(
    r"Sent (?P<sent>\d+) bytes \d+ pkt \(dropped (?P<dropped>\d+), overlimits (?P<overlimits>\d+)"
)


@dataclass(frozen=True)
class Counters:
    sent: int  # bytes that left by this end
    dropped: int  # packets dropped: the queue was full
    overlimits: int  # times a packet was held back for want of tokens: the rate bound

    def minus(self, before: Counters) -> Counters:
        return Counters(
            self.sent - before.sent,
            self.dropped - before.dropped,
            self.overlimits - before.overlimits,
        )


@contextmanager
def shaped(veth: Veth, rate: str) -> Iterator[Shaping]:
    """Bound the pair to ``rate`` each way (tbf on both ends' egress); removed on exit."""
    parse_rate(rate)
    if shutil.which("tc") is None:
        raise BenchError("the shaped-link variant cannot run: `tc` (iproute2) is not installed")
    shaping = Shaping(veth, rate)
    try:
        for netns, dev in shaping.devices().values():
            args = [*netns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate]
            proc = _tc(*args, "burst", TBF_BURST, "latency", TBF_LATENCY)
            if proc.returncode != 0:
                raise BenchError(f"`tc {' '.join(args)}` failed: {proc.stderr.strip()}")
        yield shaping
    finally:
        for netns, dev in shaping.devices().values():
            _tc(*netns, "qdisc", "del", "dev", dev, "root")  # absent when the add failed
