#!/usr/bin/env python3
"""Run registrish's benchmarks against real peers and write the results into BENCHMARKS.md.

    python3 bench/run.py                          # every scenario, full data, 5 runs
    python3 bench/run.py --quick                  # ~100 MiB data, 200 wide tags
    python3 bench/run.py --scenario serving --scenario pull --runs 7

Data is generated offline, pushed once to a docker-registry on 127.0.0.1 and cached under
--cache (default /tmp/registrish-bench/<scale>); later runs reuse it. Every server is
started on a free loopback port (the serving scenario also on a veth pair into a network
namespace it creates and removes: root and `ip`; bucket_link shapes such a pair with `tc`)
and stopped by PID. Needs skopeo,
docker-registry, nginx, caddy, apache2, wrk, curl, umoci and /usr/bin/time (see .ci/run).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
import traceback
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
# The harness reuses the test bed (tests/testbed) and runs from a checkout.
for _p in (_REPO, _REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from testbed.upstream import start_registry  # noqa: E402

from bench import datagen, machine, netns, report  # noqa: E402
from bench.measure import RequestCounter  # noqa: E402
from bench.scenarios import SCENARIOS  # noqa: E402
from bench.workspace import LINK_RATES, Context  # noqa: E402

DEFAULT_CACHE = Path("/tmp/registrish-bench")  # noqa: S108 - a cache outside the repo, by design


def _rate(text: str) -> str:
    try:
        netns.parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable; default: all)",
    )
    p.add_argument("--runs", type=int, default=5, help="runs per measurement (default 5)")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="~100 MiB realistic set, 200 wide tags, 256 MiB layer"
    )
    size.add_argument(
        "--smoke", action="store_true", help="tiny data (CI smoke test: it runs, numbers appear)"
    )
    p.add_argument(
        "--wrk-seconds", type=float, default=None, help="wrk duration (default 5; --smoke: 1)"
    )
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="data cache directory")
    p.add_argument(
        "--output", type=Path, default=_REPO / "BENCHMARKS.md", help="markdown file to update"
    )
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument(
        "--network",
        action="append",
        choices=("loopback", "veth"),
        help="serving: where to measure (repeatable; default both; veth needs root and `ip`)",
    )
    p.add_argument(
        "--nginx-variant",
        action="append",
        default=[],
        metavar="DIRECTIVES",
        help='serving: also measure the generated nginx config plus DIRECTIVES, e.g. "sendfile on;"',
    )
    p.add_argument(
        "--link-rate",
        action="append",
        type=_rate,
        metavar="RATE",
        help="bucket_link: the link's rate each way, as tc reads it (repeatable; "
        "default 1gbit and 500mbit)",
    )
    p.add_argument("--rebuild-data", action="store_true", help="push the data sets again")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = machine.missing_binaries()
    if missing:
        print(f"bench: missing {', '.join(missing)} (see .ci/run)", file=sys.stderr)
        return 2
    scale = datagen.SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    wrk_seconds = args.wrk_seconds or (1.0 if args.smoke else 5.0)
    names = args.scenario or list(SCENARIOS)
    cache = args.cache / scale.name
    cache.mkdir(parents=True, exist_ok=True)
    command = "python3 bench/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    command = command.strip()

    info = machine.probe()
    print(f"bench: {info.describe()}", flush=True)
    started = time.monotonic()

    def stamp() -> str:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"{now}, scale `{scale.name}`, {args.runs} runs, {info.cpus} CPUs "
            f"(shared; load {machine.load_average()})"
        )

    def publish(key: str, block: str) -> None:
        # Written as each scenario ends, so a later failure keeps what was measured.
        machine_block = report.render_machine(info.describe(), stamp=stamp(), command=command)
        report.write_markdown(args.output, [("machine", machine_block), (key, block)])

    registry = start_registry(datagen.registry_dir(cache))
    results: list[report.Result] = []
    failed: list[str] = []
    try:
        data = datagen.ensure_data(
            registry,
            cache,
            datagen.make_plan(scale),
            log=lambda m: print(m, flush=True),
            rebuild=args.rebuild_data,
        )
        ctx = Context(
            registry=registry,
            data=data,
            scale=scale,
            runs=args.runs,
            wrk_seconds=wrk_seconds,
            work=cache / "work",
            counter=RequestCounter(registry.server.log_path),
            log=lambda m: print(m, flush=True),
            networks=tuple(args.network or ("loopback", "veth")),
            nginx_variants=tuple(args.nginx_variant),
            link_rates=tuple(args.link_rate or LINK_RATES),
        )
        ctx.work.mkdir(exist_ok=True)
        for name in names:
            print(f"== {name} (load {machine.load_average()})", flush=True)
            t0 = time.monotonic()
            try:
                result = SCENARIOS[name](ctx)
            except Exception as exc:  # report it, keep measuring the others
                traceback.print_exc()
                failed.append(name)
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                publish(name, report.render_failure(name, reason, stamp=stamp(), command=command))
                continue
            results.append(result)
            publish(result.key, report.render(result, stamp=stamp(), command=command))
            print(f"   done in {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        registry.server.stop()

    if args.json:
        args.json.write_text(report.to_json(results))
    for r in results:
        for c in r.checks:
            print(f"{'met   ' if c.met else 'MISSED'} {r.key}: {c.target}: {c.measured}")
    print(f"bench: wrote {args.output} in {time.monotonic() - started:.0f} s")
    if failed:
        print(f"bench: FAILED scenarios: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
