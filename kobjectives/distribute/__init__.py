"""kobjectives.distribute."""
