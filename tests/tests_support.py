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


DG_TINY = {  # tiny synthetic domains a, b, c (fsrf/data/_domains.py); c is the held-out target
    "data": {"domains": ["a", "b", "c"], "target": "c", "domain_text_dims": [32, 24, 28],
             "domain_audio_dims": [12, 8, 10], "domain_vision_dims": [16, 12, 14], "text_len": 8, "audio_len": 10,
             "vision_len": 10, "synthetic_train": 40, "synthetic_valid": 16, "synthetic_test": 24},
    "model": {"name": "midg", "hidden": 16, "heads": 2, "experts": 3, "adapter_dim": 4},
    "missing": {"valid_rates": [0.0, 0.5]},
    "optim": {"batch_size": 16},
    "train": {"epochs": 1, "num_threads": 1},
}
