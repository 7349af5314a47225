"""The bucket tree: an S3-compatible bucket as the tree's root (sync writes it directly)."""
