"""kobjectives.layers."""
