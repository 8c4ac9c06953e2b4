"""Every cluster YAML passes Ray's own config preparation and schema validation, plus our invariants."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))
PINNED = ('"ray[tune]==2.60.0"', '"optuna==5.0.0"', '"pyarrow==26.0.1"')


def check_cluster_config(raw: dict) -> dict:
    """Ray's preparation and validation (as `ray up` does, minus cloud calls) and the project's rules.

    Raises:
        ValueError: naming the offending key.
    """
    try:
        config = prepare_config(copy.deepcopy(raw))
        validate_config(config)
    except Exception as err:  # jsonschema's ValidationError, RuntimeError, ValueError
        raise ValueError(f"ray validation: {str(err).splitlines()[0]}") from None
    for name, node in config.get("available_node_types", {}).items():
        if "gpu" in name.lower() and node.get("resources", {}).get("GPU", 0) < 1:
            raise ValueError(f"available_node_types.{name}.resources: a GPU node type must declare GPU >= 1")
    setup = "\n".join(config.get("setup_commands", []))
    for pin in PINNED:
        if pin not in setup:
            raise ValueError(f"setup_commands: must install the pinned {pin}")
    if "fsrf-tune" not in setup or "pip install" not in setup:
        raise ValueError("setup_commands: must pip-install this project (~/fsrf-tune)")
    mounts = config.get("file_mounts", {})
    if "." not in mounts.values():
        raise ValueError("file_mounts: must upload this repository ('.'); ray submit uploads only the script")
    head = " ".join(config.get("head_start_ray_commands", []))
    if "--dashboard-host=127.0.0.1" not in head:
        raise ValueError("head_start_ray_commands: the dashboard must stay on 127.0.0.1 (--dashboard-host=127.0.0.1)")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config.get(key, []) if "ray start" in c]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            raise ValueError(f"{key}: every `ray start` must run with RAY_AUTH_MODE=token")
    text = yaml.safe_dump(raw).lower()
    for secret in ("aws_secret_access_key", "aws_access_key_id", "password", "-----begin"):
        if secret in text:
            raise ValueError(f"{secret}: no credentials in a cluster file")
    return config


def test_both_launcher_configs_are_shipped() -> None:
    assert {p.name for p in CONFIGS} == {"aws-gpu.yaml", "onprem.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path: Path) -> None:
    config = check_cluster_config(yaml.safe_load(path.read_text()))
    assert config["cluster_name"].startswith("fsrf-tune")


def test_aws_config_scales_gpu_workers_from_zero() -> None:
    config = check_cluster_config(yaml.safe_load((CLUSTER_DIR / "aws-gpu.yaml").read_text()))
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == 0 and worker["resources"]["GPU"] == 1
    assert config["max_workers"] >= worker["max_workers"]


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda c: c.update(head_nodes=1), "head_nodes"),
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "0.5"),
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].pop("GPU"), "gpu_worker"),
        (lambda c: c.update(head_node_type="nope"), "head_node_type"),
        (lambda c: c.update(setup_commands=["pip install -e ~/fsrf-tune"]), "setup_commands"),
        (lambda c: c.update(head_start_ray_commands=["ray start --head --dashboard-host=0.0.0.0"]), "head_start_ray_commands"),
        (lambda c: c.update(worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379"]), "worker_start_ray_commands"),
        (lambda c: c.update(file_mounts={}), "file_mounts"),
    ],
)
def test_broken_configs_name_the_key(mutate, named: str) -> None:
    raw = yaml.safe_load((CLUSTER_DIR / "aws-gpu.yaml").read_text())
    mutate(raw)
    with pytest.raises(ValueError) as info:
        check_cluster_config(raw)
    assert named in str(info.value)
