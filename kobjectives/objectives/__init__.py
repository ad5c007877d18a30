"""kobjectives.objectives."""
