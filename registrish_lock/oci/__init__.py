"""The OCI vocabulary: references, media types, manifests, referrers. Pure: no I/O."""
