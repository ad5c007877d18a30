"""kobjectives.ops."""
