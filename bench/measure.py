"""Measuring: wall time and peak RSS of a command, wrk, upstream request counts, statistics."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TIME_BIN = "/usr/bin/time"


class BenchError(RuntimeError):
    """A benchmark step failed (a command exited non-zero, a server answered wrong)."""


@dataclass(frozen=True)
class Sample:
    """One timed run: wall seconds (process start to exit), peak RSS of the process, its
    file-system outputs (`/usr/bin/time`'s %O: 512-byte blocks the kernel charged to it) and
    the CPU seconds it used (user + system, %U + %S)."""

    seconds: float
    max_rss_kib: int
    fs_out_blocks: int = 0
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class Stats:
    median: float
    low: float
    high: float
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Stats:
        if not values:
            raise ValueError("no values")
        return Stats(statistics.median(values), min(values), max(values), len(values))


def timed(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 1800.0,
    shell: bool = False,
) -> Sample:
    """Run a command to completion under ``/usr/bin/time`` (for its peak RSS).

    The wall time is measured here around the whole process (interpreter start included);
    ``/usr/bin/time``'s own cost is the same for every tool. ``shell=True`` runs ``argv[0]``
    with ``bash -c`` (loops); RSS is then the largest of the shell's children.
    """
    args = [str(a) for a in argv]
    if shell:
        args = ["bash", "-c", args[0]]
    fd, rss_file = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    try:
        full_env = {**os.environ, **env} if env is not None else None
        start = time.monotonic()
        proc = subprocess.run(
            [TIME_BIN, "-f", "%M %O %U %S", "-o", rss_file, *args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        seconds = time.monotonic() - start
        if proc.returncode != 0:
            raise BenchError(
                f"command failed (exit {proc.returncode}): {' '.join(args)}\n"
                f"--- stderr ---\n{proc.stderr.strip()[-3000:]}\n"
                f"--- stdout ---\n{proc.stdout.strip()[-1000:]}"
            )
        rss, out, user, system = Path(rss_file).read_text().strip().splitlines()[-1].split()
        return Sample(seconds, int(rss), int(out), float(user) + float(system))
    finally:
        os.unlink(rss_file)


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, every thread) a running process has used so far: for a
    server a measured command talks to, read before and after the command."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fresh_dir(path: Path) -> Path:
    """An empty directory at ``path`` (removed first when it exists)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# -- upstream request counts from docker-registry's access log ---------------------------------
_ACCESS = re.compile(r'^\S+ - \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+"')


class RequestCounter:
    """Counts the upstream's access-log lines written since :meth:`mark`.

    docker-registry logs one combined-format line per request it answered; only the harness
    talks to this registry, so every line between two marks is the measured tool's.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._offset = 0

    def mark(self) -> None:
        self._offset = self.log_path.stat().st_size

    def since_mark(self, settle: float = 0.2) -> list[tuple[str, str]]:
        time.sleep(settle)  # the registry writes its log line after the response
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            m = _ACCESS.match(line)
            if m:
                out.append((m["method"], m["path"]))
        return out


# -- wrk ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    bytes_per_s: float
    requests: int


_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _parse_bytes(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)([KMGT]?B)", text)
    if m is None:
        raise BenchError(f"cannot parse wrk size {text!r}")
    return float(m[1]) * _UNITS[m[2]]


def parse_wrk(output: str) -> WrkResult:
    """Requests/sec and Transfer/sec from wrk's summary; non-2xx answers are an error."""
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if bad:
        raise BenchError(f"wrk saw {bad[1]} non-2xx answers:\n{output}")
    errors = re.search(r"Socket errors: .*", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    transfer = re.search(r"Transfer/sec:\s+(\S+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or transfer is None or total is None:
        raise BenchError(f"cannot parse wrk output:\n{output}")
    if errors and int(total[1]) == 0:
        raise BenchError(f"wrk got no answers ({errors[0]})")
    return WrkResult(float(rps[1]), _parse_bytes(transfer[1]), int(total[1]))


def wrk(
    url: str,
    *,
    duration: float,
    threads: int = 2,
    connections: int = 16,
    headers: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> WrkResult:
    """``prefix`` runs wrk through another command (``ip netns exec NS``)."""
    argv = [
        *prefix,
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
    ]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    proc = subprocess.run(
        [*argv, url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise BenchError(f"wrk failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return parse_wrk(proc.stdout)
