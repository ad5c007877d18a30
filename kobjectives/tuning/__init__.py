"""KerasTuner hypermodels for the objectives (not yet implemented; see issue 5)."""
