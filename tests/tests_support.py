"""Values shared by the test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

TINY = {
    "data": {
        "text_len": 12, "audio_len": 16, "vision_len": 16,
        "synthetic_train": 256, "synthetic_valid": 96, "synthetic_test": 96,
    },
    "model": {"hidden": 32, "heads": 2},
    "missing": {"valid_rates": [0.0, 0.5]},
    "optim": {"batch_size": 32, "lr": 3e-3},
    "train": {"epochs": 4, "num_threads": 2},
}

