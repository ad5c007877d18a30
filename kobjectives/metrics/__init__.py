"""kobjectives.metrics."""
