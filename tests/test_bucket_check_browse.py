"""`check` verifies the browse page's data files, on a real S3 server (SeaweedFS on
loopback, the bucket served at the host root): on the bucket root (`check`) and through
the host (`check URL`), a data file deleted or damaged behind registrish's back fails the
check naming it, and the next sync repairs it. Real processes: marked slow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.buckets import env_client, env_objects, layout_config, run_json
from testbed.images import write_random_image
from testbed.s3 import SeaweedS3

from registrish_lock.cli import main

pytestmark = pytest.mark.slow


def failures(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["path"], f["problem"]) for r in doc["reports"] for f in r["failures"]]


def test_check_fails_on_a_missing_or_damaged_data_file_and_sync_repairs_it(
    seaweed: SeaweedS3,
    seaweed_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_random_image(tmp_path / "layout", "v1", [3000], seed=31)
    config = str(layout_config(tmp_path, f"s3://{seaweed.bucket}", ["a", "b"], ["v1"]))
    assert main(["lock", "-c", config]) == 0
    assert main(["sync", "-c", config]) == 0
    code, doc = run_json(capsys, "check", "-c", config)
    assert code == 0 and doc["ok"], doc
    checked = doc["reports"][0]["checked"]
    code, doc = run_json(capsys, "check", "-c", config, seaweed.url)
    assert code == 0 and doc["ok"], doc

    s3 = env_client()
    first, second = sorted(k for k in env_objects(seaweed) if k.startswith("browse/"))
    body = s3.get_object(Bucket=seaweed.bucket, Key=second)["Body"].read()
    s3.delete_object(Bucket=seaweed.bucket, Key=first)
    s3.put_object(Bucket=seaweed.bucket, Key=second, Body=bytes(reversed(body)))  # same size
    missing = (first, "a data file the browse page names is missing (run `registrish sync`)")
    damaged = (
        second,
        "a browse data file whose bytes do not match its name (run `registrish sync`)",
    )
    code, doc = run_json(capsys, "check", "-c", config)
    assert code == 1 and failures(doc) == [missing, damaged], doc
    assert doc["reports"][0]["checked"] == checked
    code, doc = run_json(capsys, "check", "-c", config, seaweed.url)  # through the host too
    assert code == 1 and failures(doc) == [missing, damaged], doc

    assert main(["sync", "-c", config]) == 0
    assert s3.get_object(Bucket=seaweed.bucket, Key=second)["Body"].read() == body
    code, doc = run_json(capsys, "check", "-c", config)
    assert code == 0 and doc["ok"], doc
    code, doc = run_json(capsys, "check", "-c", config, seaweed.url)
    assert code == 0 and doc["ok"], doc

    # the page deleted: the bucket's check fails (sync writes it); the URL check has no
    # page to follow (a host may route nothing to /index.html) and passes
    s3.delete_object(Bucket=seaweed.bucket, Key="index.html")
    code, doc = run_json(capsys, "check", "-c", config)
    page = ("index.html", "the browse page is missing (run `registrish sync`)")
    assert code == 1 and failures(doc) == [page], doc
    code, doc = run_json(capsys, "check", "-c", config, seaweed.url)
    assert code == 0 and doc["ok"], doc
    assert main(["sync", "-c", config]) == 0
    code, doc = run_json(capsys, "check", "-c", config)
    assert code == 0 and doc["ok"], doc
