"""kobjectives.data."""
