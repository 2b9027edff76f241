"""Development tools: the data simulator, the calibration study, the config linter."""
