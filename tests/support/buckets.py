"""What an S3 bucket must hold for a tree (derived independently of publish.py), and what
a real one (the test bed's SeaweedFS, `testbed.s3`) holds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from testbed.images import write_random_image
from testbed.s3 import SeaweedS3

from registrish_lock.cli import main
from registrish_lock.oci import mediatypes
from registrish_lock.serving.publish_plan import PING_KEY
from registrish_lock.serving.routes import JSON, OCTET_STREAM


def expected_bucket(root: Path) -> dict[str, tuple[bytes, str]]:
    """What the bucket must hold for a tree, derived independently of publish.py: every
    file under v2/ except typed twins and the host catch-all, manifests typed by their
    twin, plus the ping at `v2/`."""
    result: dict[str, tuple[bytes, str]] = {}
    for path in sorted((root / "v2").rglob("*")):
        if not path.is_file() or ".~" in path.name or path.name == "_referrers-empty":
            continue
        rel = path.relative_to(root).as_posix()
        section = path.parent.name
        if section == "manifests":
            (twin,) = path.parent.glob(path.name + ".~*")
            ctype = mediatypes.TYPE_OF_KIND[twin.name.rsplit(".~", 1)[1]]
        elif section == "blobs":
            ctype = OCTET_STREAM
        elif section == "referrers":
            ctype = mediatypes.OCI_INDEX
        else:
            ctype = JSON
        result[rel] = (path.read_bytes(), ctype)
    result[PING_KEY] = result["v2/index"]
    if (root / "index.html").is_file():  # the browse page
        result["index.html"] = ((root / "index.html").read_bytes(), "text/html; charset=utf-8")
    for data in sorted((root / "browse").glob("*.json")):  # and its data files
        result[f"browse/{data.name}"] = (data.read_bytes(), JSON)
    return result


def s3_client(s3: SeaweedS3) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3.api_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )


def bucket_listing(s3: SeaweedS3) -> dict[str, tuple[int, str, Any]]:
    client = s3_client(s3)
    result = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        for o in page.get("Contents", []):
            result[o["Key"]] = (o["Size"], o["ETag"], o["LastModified"])
    return result


def layout_config(tmp: Path, root: str, names: Sequence[str], tags: Sequence[str]) -> Path:
    """`tmp/registrish.toml` with tree root `root`, mirroring `tags` of the OCI layout
    `tmp/layout` (`source = "oci:layout"`) under each repository name in `names`."""
    body = f'[registry]\nroot = "{root}"\n\n'
    for name in names:
        body += f'[[image]]\nsource = "oci:layout"\nname = "{name}"\n'
        body += f"tags = {json.dumps(list(tags))}\n\n"
    config = tmp / "registrish.toml"
    config.write_text(body)
    return config


def two_image_mirror(tmp: Path, bucket: str, seed: int) -> Path:
    """Images `v1` and `v2` (one layer each, seeds `seed` and `seed + 1`) in `tmp/layout`,
    and a config mirroring `v1` of it as repositories `a` and `b` into
    `s3://bucket/mirror`, locked."""
    write_random_image(tmp / "layout", "v1", [3000], seed=seed)
    write_random_image(tmp / "layout", "v2", [4000], seed=seed + 1)
    config = layout_config(tmp, f"s3://{bucket}/mirror", ["a", "b"], ["v1"])
    assert main(["lock", "-c", str(config)]) == 0
    return config


def env_client(s3: SeaweedS3 | None = None) -> Any:
    """A client from the environment `testbed.s3.aws_environment` set (for `s3`)."""
    del s3
    import boto3

    return boto3.client("s3")


def env_objects(s3: SeaweedS3) -> dict[str, tuple[int, str]]:
    """Every key of the bucket with its size and ETag (through `env_client`)."""
    pages = env_client(s3).get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
    return {o["Key"]: (o["Size"], o["ETag"]) for p in pages for o in p.get("Contents", [])}


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """`registrish ARGV --json` in this process: the exit code and the JSON document."""
    capsys.readouterr()
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def synced_mirror(tmp: Path, root: str, upstream: str, name: str = "app-oci") -> Path:
    """`tmp/bucket.toml` mirroring `name:v1` of the seeded upstream at host `upstream`
    into `root` (an `s3://` URL), locked and synced once."""
    path = tmp / "bucket.toml"
    path.write_text(
        f'[registry]\nroot = "{root}"\n\n'
        f'[[image]]\nsource = "{upstream}/{name}"\nname = "{name}"\ntags = ["v1"]\n\n'
        f'[registries."{upstream}"]\ninsecure = true\n'
    )
    assert main(["lock", "-c", str(path)]) == 0
    assert main(["sync", "-c", str(path)]) == 0
    return path
