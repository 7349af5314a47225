"""What the benchmarks ran on: cores, memory, load, tool versions (recorded with every run)."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass

#: Everything the harness starts; checked up front so a missing tool fails before any work.
REQUIRED = ("skopeo", "docker-registry", "nginx", "caddy", "apache2", "wrk", "curl", "umoci")


def missing_binaries() -> list[str]:
    missing = [b for b in REQUIRED if shutil.which(b) is None]
    if not os.access("/usr/bin/time", os.X_OK):
        missing.append("/usr/bin/time (package 'time')")
    return missing


def _version(argv: list[str], pattern: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(pattern, proc.stdout + proc.stderr)
    return m[1] if m else "?"


@dataclass(frozen=True)
class Machine:
    cpus: int
    memory_gib: float
    kernel: str
    python: str
    versions: dict[str, str]

    def describe(self) -> str:
        tools = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        return (
            f"{self.cpus} CPUs, {self.memory_gib:.1f} GiB RAM, Linux {self.kernel}, "
            f"Python {self.python}; {tools}"
        )


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def probe() -> Machine:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    versions = {
        "skopeo": _version(["skopeo", "--version"], r"version (\S+)"),
        "docker-registry": _version(["docker-registry", "--version"], r"distribution (\S+)"),
        "nginx": _version(["nginx", "-v"], r"nginx/(\S+)"),
        "caddy": _version(["caddy", "version"], r"v?(\d+\.\d+\.\d+)"),
        "apache2": _version(["apache2", "-v"], r"Apache/(\S+)"),
        "wrk": _version(["wrk", "-v"], r"wrk (\S+)"),
        "curl": _version(["curl", "--version"], r"curl (\S+)"),
    }
    return Machine(
        cpus=os.cpu_count() or 0,
        memory_gib=pages / 1024**3,
        kernel=platform.release(),
        python=platform.python_version(),
        versions=versions,
    )
