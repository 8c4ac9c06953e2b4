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



def dashboard_get(storage: object, path: str) -> dict:
    """GET one JSON endpoint of optuna-dashboard's own WSGI app (``/api/studies``, ...) over ``storage``."""
    import json
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard

    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD="GET")
    status: list[str] = []
    body = b"".join(optuna_dashboard.wsgi(storage)(environ, lambda s, headers, exc=None: status.append(s)))
    assert status == ["200 OK"], (status, body[:300])
    return json.loads(body)


def dashboard_study(storage: object, name: str) -> dict:
    """The study ``name`` as optuna-dashboard serves it (its trials, objective names, ...)."""
    studies = dashboard_get(storage, "/api/studies")["study_summaries"]
    (study_id,) = [s["study_id"] for s in studies if s["study_name"] == name]
    return dashboard_get(storage, f"/api/studies/{study_id}")

DG_TINY = {  # tiny synthetic domains a, b, c (fsrf/data/_domains.py); c is the held-out target
    "data": {"domains": ["a", "b", "c"], "target": "c", "domain_text_dims": [32, 24, 28],
             "domain_audio_dims": [12, 8, 10], "domain_vision_dims": [16, 12, 14], "text_len": 8, "audio_len": 10,
             "vision_len": 10, "synthetic_train": 40, "synthetic_valid": 16, "synthetic_test": 24},
    "model": {"name": "midg", "hidden": 16, "heads": 2, "experts": 3, "adapter_dim": 4},
    "missing": {"valid_rates": [0.0, 0.5]},
    "optim": {"batch_size": 16},
    "train": {"epochs": 1, "num_threads": 1},
}
