"""What the bucket modules share about botocore's errors (`client`'s mapping, reused)."""

from __future__ import annotations

from typing import Any

from .client import botocore_errors, client_error

__all__ = ["botocore_errors", "client_error", "error_code"]


def error_code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response: Any = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
