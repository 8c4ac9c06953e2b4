"""Ray Tune x Optuna searches over FSRF's loss weights and missing-rate curricula."""
