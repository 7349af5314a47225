"""`sync` straight into a bucket (`root = "s3://…"`) on a real S3 server (SeaweedFS on
loopback): the bucket ends up holding what `publish` of a local tree would, real clients
pull every manifest kind from it at the host root, `registrish check URL` passes, a no-op
sync makes no upstream request and a fixed number of bucket requests, and `gc` works on it.
Every test starts real processes: marked slow."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.buckets import env_client, env_objects, expected_bucket, layout_config, run_json
from testbed.clients import (
    Containerd,
    Dockerd,
    ctr_pull,
    docker_pull,
    podman_pull,
    skopeo_copy,
)
from testbed.images import SeededUpstream
from testbed.s3 import SeaweedS3

from registrish_lock.bucket.state import STATE_REL
from registrish_lock.cli import main

pytestmark = pytest.mark.slow

KINDS = ("app-oci", "app-docker", "multi", "multi-docker")
IMMUTABLE = "public, max-age=31536000, immutable"


def write_configs(tmp: Path, upstream: str, images: list[tuple[str, str]], bucket: str) -> Path:
    """`local.toml` (root "public") and `bucket.toml` (root s3://BUCKET), same images;
    returns the bucket one."""
    body = '[defaults]\nplatforms = ["linux/amd64", "linux/arm64"]\n\n'
    for name, tag in images:
        body += f'[[image]]\nsource = "{upstream}/{name}"\nname = "{name}"\ntags = ["{tag}"]\n\n'
    body += f'[registries."{upstream}"]\ninsecure = true\n'
    (tmp / "local.toml").write_text('[registry]\nroot = "public"\n\n' + body)
    (tmp / "bucket.toml").write_text(f'[registry]\nroot = "s3://{bucket}"\n\n' + body)
    return tmp / "bucket.toml"


client, objects = env_client, env_objects


@pytest.fixture
def env(seaweed_env: Path) -> Path:
    return seaweed_env


def test_sync_into_bucket_serves_every_kind_like_publish(
    seeded_upstream: SeededUpstream,
    seaweed: SeaweedS3,
    env: Path,
    tmp_path: Path,
    containerd: Containerd,
    dockerd: Dockerd,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_configs(
        tmp_path, seeded_upstream.host, [(n, "v1") for n in KINDS], seaweed.bucket
    )
    local = tmp_path / "local.toml"
    assert main(["lock", "-c", str(local)]) == 0 and main(["sync", "-c", str(local)]) == 0
    assert main(["lock", "-c", str(config)]) == 0

    code, dry = run_json(capsys, "sync", "-c", str(config), "--dry-run")
    assert code == 1 and dry["plan"]["pending"] and objects(seaweed) == {}

    code, done = run_json(capsys, "sync", "-c", str(config))
    assert code == 0, done
    assert done["summary"]["fetched_blobs"] == len(dry["plan"]["fetch"]) > 0
    assert not (tmp_path / ".registrish-bucket-root").exists()  # nothing local

    # the same objects, bytes and metadata as publish of the local tree would upload
    expected = expected_bucket(tmp_path / "public")  # the browse page and its data too
    assert "index.html" in expected and any(k.startswith("browse/") for k in expected)
    listed = objects(seaweed)
    assert set(listed) - {".registrish/state.json.gz"} == set(expected)
    s3 = client(seaweed)
    for key, (data, ctype) in expected.items():
        got = s3.get_object(Bucket=seaweed.bucket, Key=key)
        assert got["ContentType"] == ctype, key
        if key == "v2/":  # SeaweedFS stores a `…/` key as a directory: no body, no metadata
            continue
        assert got["Body"].read() == data, key
        immutable = "/blobs/" in key or "/manifests/sha256:" in key or key.startswith("browse/")
        assert got.get("CacheControl") == (IMMUTABLE if immutable else "public, max-age=60")
    state = s3.get_object(Bucket=seaweed.bucket, Key=STATE_REL)
    assert state["CacheControl"] == "no-store"

    host = f"127.0.0.1:{seaweed.port}"
    for name in KINDS:
        ref = seeded_upstream.get(name, "v1")
        want = ref.platforms["linux/amd64"] if ref.is_index else ref.digest
        assert skopeo_copy(f"{host}/{name}:v1", tmp_path / f"sk-{name}").digest == want
        assert ctr_pull(containerd, f"{host}/{name}@{ref.digest}").digest == ref.digest
        assert docker_pull(dockerd, f"{host}/{name}:v1").digest == ref.digest
        pulled = podman_pull(f"{host}/{name}:v1", tmp_path / f"pm-{name}")
        assert pulled.digest == ref.digest

    capsys.readouterr()
    assert main(["check", "-c", str(config), seaweed.url]) == 0, capsys.readouterr().out
    code, local_check = run_json(capsys, "check", "-c", str(config))
    assert code == 0 and local_check["ok"], local_check

    # a no-op: no upstream request; GET state + 1 LIST, no lease (it writes nothing);
    # nothing written (the state object is not rewritten)
    before = objects(seaweed)
    code, noop = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and not noop["plan"]["pending"]
    assert noop["summary"]["upstream_requests"] == 0
    assert noop["bucket_requests"] == 2, noop["bucket_requests"]
    assert objects(seaweed) == before


def _layout_config(tmp: Path, bucket: str, names: list[str], tags: list[str]) -> Path:
    return layout_config(tmp, f"s3://{bucket}/mirror", names, tags)


def test_bucket_prefix_multipart_copies_gc_and_a_corrupt_source(
    seaweed: SeaweedS3, env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from testbed.images import write_random_image

    layout = tmp_path / "layout"
    big = 12 * 1024 * 1024  # over one 5 MiB part: a multipart upload
    write_random_image(layout, "v1", [big, 3000], seed=1)
    bad = write_random_image(layout, "v2", [9 * 1024 * 1024], seed=2)
    config = _layout_config(tmp_path, seaweed.bucket, ["a", "b"], ["v1"])
    assert main(["lock", "-c", str(config)]) == 0
    code, done = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and done["summary"]["fetched_blobs"] == 3  # two layers and the config
    s3 = client(seaweed)
    listed = objects(seaweed)
    assert all(k.startswith("mirror/") for k in listed)
    blobs = sorted(k for k in listed if "/blobs/" in k)
    assert len(blobs) == 2 * 3  # a and b hold the same three blobs: uploaded once, copied
    for key in blobs:
        data = s3.get_object(Bucket=seaweed.bucket, Key=key)["Body"].read()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == key.rsplit("/", 1)[1]
    code, listing = run_json(capsys, "ls", "-c", str(config))
    tags = [t for r in listing["repositories"] for t in r["tags"]]
    assert code == 0 and len(tags) == 2 and all(t["served"] for t in tags)

    # a source whose bytes changed since the lock: the sync fails, nothing at the key,
    # no unfinished upload left behind
    config = _layout_config(tmp_path, seaweed.bucket, ["a", "b"], ["v1", "v2"])
    assert main(["lock", "-c", str(config)]) == 0
    manifest = json.loads((layout / "blobs/sha256" / bad["digest"][7:]).read_bytes())
    layer = manifest["layers"][0]["digest"]
    path = layout / "blobs/sha256" / layer[7:]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["sync", "-c", str(config), "--jobs", "1"]) == 4
    assert "hashing to" in capsys.readouterr().err
    assert not [k for k in objects(seaweed) if k.endswith(layer)]
    assert s3.list_multipart_uploads(Bucket=seaweed.bucket).get("Uploads", []) == []

    # gc: "b" leaves the config; what only b reached goes, a's copies stay
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    config = _layout_config(tmp_path, seaweed.bucket, ["a"], ["v1"])
    assert main(["lock", "-c", str(config)]) == 0
    assert main(["sync", "-c", str(config)]) == 0  # b's tags leave the tree
    before = objects(seaweed)
    code, dry = run_json(capsys, "gc", "-c", str(config), "--dry-run")
    assert code == 1 and dry["bytes_freed"] > big
    assert objects(seaweed) == before
    code, gone = run_json(capsys, "gc", "-c", str(config))
    assert code == 0 and {s["path"] for s in gone["remove"]} == {s["path"] for s in dry["remove"]}
    after = objects(seaweed)
    assert not [k for k in after if k.startswith("mirror/v2/b/")]
    assert [k for k in after if k.startswith("mirror/v2/a/blobs/")]
    assert main(["check", "-c", str(config)]) == 0
    code, again = run_json(capsys, "gc", "-c", str(config), "--dry-run")
    assert code == 0 and not again["pending"]
    code, pruned = run_json(capsys, "sync", "-c", str(config), "--prune")
    assert code == 0 and pruned["gc"] is not None and not pruned["gc"]["pending"]
    assert pruned["summary"]["upstream_requests"] == 0


def test_local_only_commands_refuse_a_bucket_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _layout_config(tmp_path, "my-bucket", ["a"], ["v1"])
    for argv in (["serve"], ["publish", "s3://other"]):
        capsys.readouterr()
        assert main([argv[0], "-c", str(config), *argv[1:]]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert "registry.root is the bucket s3://my-bucket/mirror" in lines[0], lines
    (tmp_path / "bad.toml").write_text('[registry]\nroot = "s3://Bad_Bucket"\n')
    assert main(["lock", "-c", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert "registry.root" in err and "Traceback" not in err
    (tmp_path / "nginx.toml").write_text('[registry]\nroot = "s3://abc"\nhosts = ["nginx"]\n')
    assert main(["lock", "-c", str(tmp_path / "nginx.toml")]) == 2
    assert "registry.hosts" in capsys.readouterr().err


def test_a_held_lease_stops_a_sync_and_a_killed_runs_uploads_are_aborted(
    seaweed: SeaweedS3, env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from testbed.images import write_random_image

    from registrish_lock.bucket.lease import BucketLease

    write_random_image(tmp_path / "layout", "v1", [2000], seed=3)
    config = _layout_config(tmp_path, seaweed.bucket, ["a"], ["v1"])
    assert main(["lock", "-c", str(config)]) == 0
    s3 = client(seaweed)
    with BucketLease(s3, seaweed.bucket, "mirror/.registrish/", holder="the other writer"):
        capsys.readouterr()
        assert main(["sync", "-c", str(config), "--no-wait"]) == 5
        err = capsys.readouterr().err
        assert "the other writer" in err and len(err.strip().splitlines()) <= 2, err
        assert not [k for k in objects(seaweed) if k.startswith("mirror/v2/")]
    # what a SIGKILLed run leaves: an unfinished upload, invisible; the next run aborts it
    left = s3.create_multipart_upload(Bucket=seaweed.bucket, Key="mirror/v2/a/blobs/sha256:x")
    assert main(["sync", "-c", str(config)]) == 0
    uploads = s3.list_multipart_uploads(Bucket=seaweed.bucket).get("Uploads", [])
    assert left["UploadId"] not in {u["UploadId"] for u in uploads}
    assert main(["check", "-c", str(config)]) == 0


def test_sync_killed_mid_upload_exposes_nothing_and_the_rerun_converges(
    seaweed: SeaweedS3,
    env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGKILL while the big layer's second part is on its way (a proxy holds that request,
    so the kill lands there however fast the machine is): the bucket shows no manifest or
    tag, only an unfinished upload, which the rerun aborts before converging."""
    import signal
    import subprocess
    import sys
    import threading

    from testbed.images import write_random_image
    from testbed.proxy import CountingProxy, Pause

    manifest = write_random_image(tmp_path / "layout", "v1", [20 * 1024 * 1024, 500], seed=4)
    doc = json.loads((tmp_path / "layout/blobs/sha256" / manifest["digest"][7:]).read_bytes())
    layer_digest = doc["layers"][1]["digest"]
    config = _layout_config(tmp_path, seaweed.bucket, ["a"], ["v1"])
    assert main(["lock", "-c", str(config)]) == 0
    held, release = threading.Event(), threading.Event()

    def hold_second_part(method: str, path: str) -> Pause | None:
        if method == "PUT" and "partNumber=2" in path:
            held.set()
            return Pause(release)
        return None

    with CountingProxy(seaweed.api_url, fault=hold_second_part) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://localhost:{proxy.port}")
        argv = [sys.executable, "-m", "registrish_lock", "sync", "-c", str(config), "-j", "1"]
        proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        try:
            assert held.wait(timeout=120), "the sync never sent a second part"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            release.set()
    assert proc.returncode == -signal.SIGKILL
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.api_url)
    keys = set(objects(seaweed))
    assert not [k for k in keys if "/manifests/" in k or "/tags/" in k or k.endswith("v2/")]
    s3 = client(seaweed)
    assert s3.list_multipart_uploads(Bucket=seaweed.bucket).get("Uploads")
    # the killed run's lease names a dead process of this machine: taken over at once
    assert main(["sync", "-c", str(config), "--no-wait"]) == 0
    assert s3.list_multipart_uploads(Bucket=seaweed.bucket).get("Uploads", []) == []
    assert main(["check", "-c", str(config)]) == 0

    # a blob rewritten behind registrish's back (same size): only --verify sees it, and
    # fetches it again; the --verify of a bucket downloads every blob
    key = next(k for k in objects(seaweed) if "/blobs/" in k and k.endswith(layer_digest))
    good = s3.get_object(Bucket=seaweed.bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=seaweed.bucket, Key=key, Body=bytes(reversed(good)))
    code, plain = run_json(capsys, "sync", "-c", str(config))
    assert code == 0 and not plain["plan"]["pending"]
    code, verified = run_json(capsys, "sync", "-c", str(config), "--verify")
    assert code == 0 and verified["summary"]["fetched_blobs"] == 1
    assert s3.get_object(Bucket=seaweed.bucket, Key=key)["Body"].read() == good


def test_refused_credentials_fail_a_bucket_sync_in_one_line(
    seaweed: SeaweedS3,
    env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from testbed.images import write_random_image

    write_random_image(tmp_path / "layout", "v1", [100], seed=5)
    config = _layout_config(tmp_path, seaweed.bucket, ["a"], ["v1"])
    assert main(["lock", "-c", str(config)]) == 0
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all")
    capsys.readouterr()
    assert main(["sync", "-c", str(config)]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert "not-the-secret-at-all" not in err and len(err.strip().splitlines()) <= 2, err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    assert objects(seaweed) == {}
