"""The fixed JSON documents of the registry API, defined once: `sync` writes them into
the tree and `serve`, the host configs and `check` send or expect exactly these bytes."""

from __future__ import annotations

import json
from typing import Any

from . import mediatypes


def canonical_json(document: Any) -> bytes:
    """Deterministic JSON: sorted keys, compact, trailing newline."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n"


#: The body of `GET /v2/` (the API ping).
PING_DOCUMENT = canonical_json({})
#: The referrers index of a manifest nothing refers to.
EMPTY_REFERRERS = canonical_json(
    {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
)
