"""kobjectives.losses."""
