"""kobjectives.export."""
