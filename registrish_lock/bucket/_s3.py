"""What the bucket modules share about botocore's errors: which exceptions are the store's,
and the one-line error (exit 3) each becomes, never naming a credential."""

from __future__ import annotations

from typing import Any

from ..errors import ExitCode, RegistrishError


def error_code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


class PublishError(RegistrishError):
    """The object store refused or failed (credentials, bucket, network)."""

    exit_code = ExitCode.UPSTREAM


def client_error(exc: Exception, what: str) -> PublishError:
    """A one-line error from a botocore exception (never any credential)."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        code, message = err.get("Code", "?"), err.get("Message", "")
        hint = None
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            hint = (
                "check the credentials (AWS_PROFILE, --profile) and that they may List/Put/Delete"
            )
        elif code in ("NoSuchBucket", "404"):
            hint = "create the bucket first, or check --endpoint-url and --region"
        return PublishError(f"{what}: {code} {message}".rstrip(), hint=hint)
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return PublishError(
            f"{what}: no S3 credentials found",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use --profile with ~/.aws/credentials",
        )
    if name == "ProfileNotFound":
        return PublishError(f"{what}: {exc}", hint="see ~/.aws/config and ~/.aws/credentials")
    return PublishError(f"{what}: {exc}", hint="check --endpoint-url and the network")


def botocore_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)
