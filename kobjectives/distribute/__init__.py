"""Strategy resolution and cross-replica helpers."""

