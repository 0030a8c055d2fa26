"""Jobs: the final model, cross-validation, sweeps, tuning, the learning-rate range test, evaluate,
calibrate. Each builds on the layers below and writes a run directory."""
