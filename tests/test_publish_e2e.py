"""`lock` → `sync` → `publish` to a real S3 server (SeaweedFS on loopback), then real
pulls from the bucket at the host root (skopeo, containerd, the Docker engine) and
`registrish check` against it. Every test starts real processes: marked slow."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.buckets import bucket_listing, expected_bucket, s3_client
from testbed.clients import Containerd, Dockerd, ctr_pull, docker_pull, docker_run, skopeo_copy
from testbed.images import DEFAULT_OUTPUT, SeededUpstream, push_random_image
from testbed.proxy import CountingProxy, Pause
from testbed.s3 import SeaweedS3, aws_environment

from registrish_lock import USER_AGENT
from registrish_lock.bucket import client as s3client
from registrish_lock.cli import main
from registrish_lock.commands import publish as publish_cmd
from registrish_lock.errors import ExitCode
from registrish_lock.serving.publish import collect_objects
from registrish_lock.serving.publish_plan import PING_KEY, Phase
from registrish_lock.serving.routes import Policy
from registrish_lock.tree.layout import Layout

pytestmark = pytest.mark.slow

KINDS = ("app-oci", "app-docker", "multi", "multi-docker")
MiB = 1024 * 1024


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, seaweed: SeaweedS3) -> Path:
    """Credentials in the environment, the endpoint and addressing style on publish's
    command line. Returns the (empty) directory for shared config/credentials files."""
    return aws_environment(monkeypatch, tmp_path, seaweed, endpoint=False)


@dataclass
class Calls:
    """S3 API calls made by publish, counted with botocore's event hooks (client side)."""

    puts: list[str] = field(default_factory=list)
    multipart: list[str] = field(default_factory=list)
    #: CopyObject destinations (a blob shared by several repositories)
    copies: list[str] = field(default_factory=list)
    parts: int = 0
    deletes: int = 0
    #: the User-Agent of every request sent
    agents: list[str] = field(default_factory=list)
    #: raise after this many PutObject/CreateMultipartUpload calls (None: never)
    fail_after: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        self.puts.clear()
        self.multipart.clear()
        self.copies.clear()
        self.parts = self.deletes = 0


class InjectedFailure(Exception):
    pass


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """Wrap `open_store` as the command calls it: count calls, small multipart parts."""
    counted = Calls()
    real_open = s3client.open_store

    def open_store(*args: Any, **kwargs: Any) -> s3client.Boto3Store:
        kwargs.update(part_size=5 * MiB)
        store = real_open(*args, **kwargs)

        def on_put(params: dict[str, Any], **_: Any) -> None:
            with counted.lock:
                if counted.fail_after is not None and (
                    len(counted.puts) + len(counted.multipart) >= counted.fail_after
                ):
                    raise InjectedFailure(params["Key"])
                counted.puts.append(params["Key"])

        def on_multipart(params: dict[str, Any], **_: Any) -> None:
            with counted.lock:
                counted.multipart.append(params["Key"])

        def on_copy(params: dict[str, Any], **_: Any) -> None:
            with counted.lock:
                counted.copies.append(params["Key"])

        def on_part(**_: Any) -> None:
            with counted.lock:
                counted.parts += 1

        def on_delete(params: dict[str, Any], **_: Any) -> None:
            counted.deletes += len(params["Delete"]["Objects"])

        def on_send(request: Any, **_: Any) -> None:
            with counted.lock:
                counted.agents.append(str(request.headers.get("User-Agent", "")))

        events = store.client.meta.events
        events.register("before-send.s3", on_send)
        events.register("provide-client-params.s3.PutObject", on_put)
        events.register("provide-client-params.s3.CreateMultipartUpload", on_multipart)
        events.register("provide-client-params.s3.UploadPart", on_part)
        events.register("provide-client-params.s3.CopyObject", on_copy)
        events.register("provide-client-params.s3.DeleteObjects", on_delete)
        return store

    monkeypatch.setattr(publish_cmd, "open_store", open_store)
    return counted


def assert_bucket_equals_tree(s3: SeaweedS3, root: Path) -> None:
    """Same keys as the tree (see `expected_bucket`), same bytes, same Content-Type, and
    the route table's Cache-Control."""
    expected = expected_bucket(root)
    assert set(bucket_listing(s3)) == set(expected)
    client = s3_client(s3)
    for key, (data, ctype) in expected.items():
        got = client.get_object(Bucket=s3.bucket, Key=key)
        assert got["ContentType"] == ctype, key
        body = got["Body"].read()
        if key == PING_KEY:
            continue  # SeaweedFS stores a `…/` key as a directory and serves no body
        assert body == data, key
        immutable = "/blobs/" in key or "/manifests/sha256:" in key or key.startswith("browse/")
        assert got.get("CacheControl") == (
            "public, max-age=31536000, immutable" if immutable else "public, max-age=60"
        ), key


def write_config(tmp: Path, upstream_host: str, images: list[tuple[str, str]]) -> Path:
    text = (
        '[registry]\nroot = "public"\n\n[defaults]\nplatforms = ["linux/amd64", "linux/arm64"]\n\n'
    )
    for name, tag in images:
        text += (
            f'[[image]]\nsource = "{upstream_host}/{name}"\nname = "{name}"\ntags = ["{tag}"]\n\n'
        )
    text += f'[registries."{upstream_host}"]\ninsecure = true\n'
    config = tmp / "registrish.toml"
    config.write_text(text)
    return config


def registrish(*argv: str) -> int:
    return main(list(argv))


def publish_args(
    config: Path, s3: SeaweedS3, *extra: str, endpoint: str | None = None
) -> list[str]:
    return [
        "publish",
        "-c",
        str(config),
        f"s3://{s3.bucket}",
        "--endpoint-url",
        endpoint or s3.api_url,
        "--addressing-style",
        "path",
        *extra,
    ]


def test_publish_then_pull_all_four_kinds_from_the_bucket(
    seeded_upstream: SeededUpstream,
    seaweed: SeaweedS3,
    aws_env: Path,
    calls: Calls,
    tmp_path: Path,
    containerd: Containerd,
    dockerd: Dockerd,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, seeded_upstream.host, [(n, "v1") for n in KINDS])
    assert registrish("lock", "-c", str(config)) == 0
    assert registrish("sync", "-c", str(config)) == 0
    root = tmp_path / "public"
    capsys.readouterr()

    assert registrish(*publish_args(config, seaweed, "--dry-run", "--json")) == 1
    dry = json.loads(capsys.readouterr().out)
    assert calls.puts == [] and bucket_listing(seaweed) == {}
    expected = expected_bucket(root)
    # a blob the repositories share is sent once and copied to its other keys
    assert len(dry["plan"]["upload"]) + len(dry["plan"]["copy"]) == len(expected)
    assert dry["plan"]["copy"], "the seeded images share layers"
    assert dry["plan"]["upload_bytes"] + dry["plan"]["copy_bytes"] == sum(
        len(d) for d, _ in expected.values()
    )

    assert registrish(*publish_args(config, seaweed, "--json")) == 0
    out = capsys.readouterr().out
    assert seaweed.secret_key not in out and seaweed.access_key not in out
    summary = json.loads(out)["summary"]
    assert summary["uploaded"] == len(calls.puts) == len(expected) - len(calls.copies)
    assert summary["copied"] == len(calls.copies) == len(dry["plan"]["copy"])
    # every request to the store names registrish (after boto3's own words)
    assert calls.agents and all(USER_AGENT in agent for agent in calls.agents)
    assert_bucket_equals_tree(seaweed, root)
    # uploads followed the phases: no tag before its manifests and blobs
    phase_of = {o.key: o.phase for o in collect_objects(Layout(root), Policy())}
    phases = [phase_of[k] for k in calls.puts]
    assert phases[0] is Phase.BLOBS and Phase.PING in phases
    assert phases == sorted(phases)

    # real clients pull from the bucket at the host root, by tag and by digest
    host = f"127.0.0.1:{seaweed.port}"
    for name in KINDS:
        ref = seeded_upstream.get(name, "v1")
        safe = name.replace("/", "_")
        by_tag = skopeo_copy(f"{host}/{name}:v1", tmp_path / f"sk-{safe}")
        by_digest = skopeo_copy(f"{host}/{name}@{ref.digest}", tmp_path / f"skd-{safe}")
        want = ref.platforms["linux/amd64"] if ref.is_index else ref.digest
        assert by_tag.digest == by_digest.digest == want
        assert ctr_pull(containerd, f"{host}/{name}:v1").digest == ref.digest
        assert ctr_pull(containerd, f"{host}/{name}@{ref.digest}").digest == ref.digest
        assert docker_pull(dockerd, f"{host}/{name}:v1").digest == ref.digest
        assert docker_pull(dockerd, f"{host}/{name}@{ref.digest}").digest == ref.digest
    arm = skopeo_copy(f"{host}/multi:v1", tmp_path / "arm", arch="arm64")
    assert arm.digest == seeded_upstream.get("multi", "v1").platforms["linux/arm64"]
    assert DEFAULT_OUTPUT in docker_run(dockerd, f"{host}/multi-docker:v1")

    capsys.readouterr()
    code = registrish("check", "-c", str(config), seaweed.url)
    report = capsys.readouterr().out
    assert code == 0, report
    assert f"{seaweed.url}: checked" in report and report.rstrip().endswith(": ok")

    # a second publish uploads nothing (client-side count and server-side timestamps)
    before = bucket_listing(seaweed)
    calls.reset()
    assert registrish(*publish_args(config, seaweed, "--json")) == 0
    assert calls.puts == calls.multipart == calls.copies == [] and calls.deletes == 0
    assert json.loads(capsys.readouterr().out)["summary"]["uploaded"] == 0
    assert bucket_listing(seaweed) == before
    assert registrish(*publish_args(config, seaweed, "--dry-run")) == 0


def test_moved_tag_then_publish_delete_leaves_the_bucket_equal_to_the_tree(
    seeded_upstream: SeededUpstream,
    seaweed: SeaweedS3,
    aws_env: Path,
    calls: Calls,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # credentials from a shared credentials file and a named profile, not the environment
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (aws_env / "credentials").write_text(
        f"[pubtest]\naws_access_key_id = {seaweed.access_key}\n"
        f"aws_secret_access_key = {seaweed.secret_key}\n"
    )
    (aws_env / "config").write_text(
        "[profile pubtest]\nregion = us-east-1\ns3 =\n    addressing_style = path\n"
    )
    upstream = seeded_upstream.registry
    repo = "publish/moving"
    old = push_random_image(upstream, repo, "v1", (6 * MiB, 1024), seed=1, workdir=tmp_path / "img")
    config = write_config(tmp_path, seeded_upstream.host, [(repo, "v1"), ("app-oci", "v1")])
    root = tmp_path / "public"
    args = ["publish", "-c", str(config), f"s3://{seaweed.bucket}", "--endpoint-url"]
    args += [seaweed.api_url, "--profile", "pubtest"]
    assert registrish("lock", "-c", str(config)) == 0
    assert registrish("sync", "-c", str(config)) == 0
    assert registrish(*args) == 0
    assert_bucket_equals_tree(seaweed, root)
    big = f"v2/{repo}/blobs/{old.layers[0]}"
    assert calls.multipart == [big] and calls.parts == 2  # 6 MiB in 5 MiB parts
    first = expected_bucket(root)

    new = push_random_image(upstream, repo, "v1", (6 * MiB, 1024), seed=2, workdir=tmp_path / "img")
    assert new.digest != old.digest
    assert registrish("lock", "-c", str(config), "--upgrade") == 0
    assert registrish("sync", "-c", str(config), "--prune") == 0
    second = expected_bucket(root)
    changed = {k for k, v in second.items() if first.get(k) != v}
    gone = set(first) - set(second)
    assert f"v2/{repo}/manifests/{old.digest}" in gone and big in gone

    calls.reset()
    assert registrish(*args, "--dry-run", "--delete") == 1
    assert calls.puts == [] and calls.deletes == 0
    assert registrish(*args, "--delete") == 0
    assert set(calls.puts) | set(calls.multipart) == changed  # only what changed
    assert calls.deletes == len(gone)
    assert_bucket_equals_tree(seaweed, root)
    pulled = skopeo_copy(f"127.0.0.1:{seaweed.port}/{repo}:v1", tmp_path / "pulled")
    assert pulled.digest == new.digest


def test_interrupted_publish_converges(
    seeded_upstream: SeededUpstream,
    seaweed: SeaweedS3,
    aws_env: Path,
    calls: Calls,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, seeded_upstream.host, [(n, "v1") for n in KINDS])
    assert registrish("lock", "-c", str(config)) == 0
    assert registrish("sync", "-c", str(config)) == 0
    root = tmp_path / "public"
    phase_of = {o.key: o.phase for o in collect_objects(Layout(root), Policy())}
    blob_keys = [key for key, p in phase_of.items() if p is Phase.BLOBS]
    digests = {key.rsplit("/", 1)[1] for key in blob_keys}
    # fails among manifests: each digest uploaded once, its other keys copied, 3 manifests
    calls.fail_after = len(digests) + 3
    with pytest.raises(InjectedFailure):
        registrish(*publish_args(config, seaweed, "--jobs", "2"))
    present = set(bucket_listing(seaweed))
    k = len(blob_keys) + 3
    assert len(present) == k and len(calls.copies) == len(blob_keys) - len(digests) > 0
    # what got in is a prefix of the order: all blobs, some manifests, no tag
    highest = max(phase_of[key] for key in present)
    assert highest is Phase.MANIFESTS
    assert {key for key, p in phase_of.items() if p < highest} <= present

    calls.fail_after = None
    calls.reset()
    assert registrish(*publish_args(config, seaweed)) == 0
    assert len(calls.puts) == len(phase_of) - k  # the rerun only sends what was missing
    assert calls.copies == []
    assert_bucket_equals_tree(seaweed, root)
    capsys.readouterr()


def test_refused_credentials_are_one_line_without_secrets(
    seeded_upstream: SeededUpstream,
    seaweed: SeaweedS3,
    aws_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, seeded_upstream.host, [("app-oci", "v1")])
    assert registrish("lock", "-c", str(config)) == 0
    assert registrish("sync", "-c", str(config)) == 0
    wrong = "not-the-secret-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    capsys.readouterr()
    assert registrish(*publish_args(config, seaweed)) == ExitCode.UPSTREAM
    captured = capsys.readouterr()
    assert f"error: listing s3://{seaweed.bucket}/: " in captured.err
    assert "hint: check the credentials" in captured.err
    assert wrong not in captured.err + captured.out and "Traceback" not in captured.err
    assert bucket_listing(seaweed) == {}


def test_publish_killed_mid_upload_converges_on_rerun(
    seeded_upstream: SeededUpstream,
    seaweed: SeaweedS3,
    aws_env: Path,
    calls: Calls,
    tmp_path: Path,
) -> None:
    """SIGKILL the publish process after a few uploads (not an exception: the process is
    gone, whatever it held): what reached the bucket is a prefix of the safe order, and the
    rerun uploads exactly what is missing and leaves the bucket equal to the tree."""
    push_random_image(
        seeded_upstream.registry,
        "publish/killed",
        "v1",
        layer_sizes=[256 * 1024] * 24,
        seed=77,
        workdir=tmp_path / "build",
    )
    config = write_config(tmp_path, seeded_upstream.host, [("publish/killed", "v1")])
    assert registrish("lock", "-c", str(config)) == 0
    assert registrish("sync", "-c", str(config)) == 0
    root = tmp_path / "public"
    phase_of = {o.key: o.phase for o in collect_objects(Layout(root), Policy())}

    # Through a proxy that holds every PUT after the fifth: the kill lands mid-upload
    # however fast the machine is (the client signs `Host: localhost:PORT`, which the proxy
    # passes on, as SeaweedFS's path-style API wants).
    release = threading.Event()
    puts: list[str] = []

    def pause_after_five(method: str, path: str) -> Pause | None:
        if method == "PUT":
            puts.append(path)
            if len(puts) > 5:
                return Pause(release)
        return None

    with CountingProxy(seaweed.api_url, fault=pause_after_five) as proxy:
        endpoint = f"http://localhost:{proxy.port}"
        args = publish_args(config, seaweed, "-j", "1", endpoint=endpoint)
        proc = subprocess.Popen(  # env: aws_env
            [sys.executable, "-m", "registrish_lock", *args], stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        uploaded = 0
        try:
            for line in proc.stderr:  # plain progress: one "[i/N] uploaded KEY" line per object
                uploaded += "] uploaded " in line
                if uploaded == 5:
                    proc.send_signal(signal.SIGKILL)
                    break
            proc.wait(timeout=60)
        finally:
            release.set()
    assert proc.returncode == -signal.SIGKILL, "publish finished before it could be killed"

    present = set(bucket_listing(seaweed))
    assert 5 <= len(present) < len(phase_of)
    highest = max(phase_of[key] for key in present)
    assert highest is Phase.BLOBS  # nothing but blobs yet: no manifest, no tag exposed
    calls.reset()
    assert registrish(*publish_args(config, seaweed)) == 0
    assert len(calls.puts) == len(phase_of) - len(present)
    assert_bucket_equals_tree(seaweed, root)


def test_a_rotten_big_blob_is_never_visible(
    seeded_upstream: SeededUpstream,
    seaweed: SeaweedS3,
    aws_env: Path,
    calls: Calls,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A blob over one part whose bytes no longer hash to its name: its multipart upload
    starts (it is verified as it streams), then is aborted; nothing of it, and nothing of a
    later phase, reaches the bucket."""
    repo = "publish/rotten"
    image = push_random_image(
        seeded_upstream.registry, repo, "v1", (6 * MiB,), seed=5, workdir=tmp_path / "img"
    )
    config = write_config(tmp_path, seeded_upstream.host, [(repo, "v1")])
    assert registrish("lock", "-c", str(config)) == 0
    assert registrish("sync", "-c", str(config)) == 0
    key = f"v2/{repo}/blobs/{image.layers[0]}"
    blob = tmp_path / "public" / key
    blob.chmod(0o644)
    with blob.open("r+b") as handle:  # a hardlink: the store's copy rots too
        handle.seek(blob.stat().st_size - 1)
        last = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([last[0] ^ 0xFF]))
    capsys.readouterr()
    assert registrish(*publish_args(config, seaweed)) == ExitCode.INTEGRITY
    err = capsys.readouterr().err
    assert f"{blob}: " in err and "do not match the name; not uploaded" in err
    assert "sync --verify" in err and "Traceback" not in err
    assert calls.multipart == [key] and calls.parts >= 1  # streamed, then refused
    present = bucket_listing(seaweed)
    assert key not in present and not any("/manifests/" in k for k in present)
    uploads = s3_client(seaweed).list_multipart_uploads(Bucket=seaweed.bucket)
    assert uploads.get("Uploads", []) == []  # aborted, not left to bill
