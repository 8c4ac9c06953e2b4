"""Every cluster YAML passes Ray's own config preparation and schema validation, plus our invariants
(``fsrf cluster check``, tuning/_cluster.py), and a filled-in file's mistakes are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fsrf import FSRFError
from tuning._cluster import check_cluster_config as _check

CLUSTER_DIR = Path(__file__).resolve().parents[1] / "cluster"
CONFIGS = sorted(CLUSTER_DIR.glob("*.yaml"))


def check_cluster_config(raw: dict) -> dict:
    """The shipped templates' check (placeholders allowed), as ``fsrf cluster check --template`` runs it."""
    return _check(raw, path="<test>", template=True)


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
    with pytest.raises(FSRFError) as info:
        check_cluster_config(raw)
    assert named in str(info.value)


def _filled(tmp_path: Path, **changes) -> Path:
    """cluster/onprem.yaml filled in for this machine (a real key file), then ``changes`` applied."""
    raw = yaml.safe_load((CLUSTER_DIR / "onprem.yaml").read_text())
    key = tmp_path / "id_test"
    key.write_text("not a real key, only a file that exists\n")
    raw["provider"].update(head_ip="10.0.0.5", worker_ips=["gpu-1.lab.example", "10.0.0.7"])
    raw["auth"].update(ssh_user="alice", ssh_private_key=str(key))
    for dotted, value in changes.items():
        section, _, field = dotted.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cluster(args: list[str], capsys) -> tuple[int, str]:
    from fsrf.cli import main

    code = main(["cluster", "check", *args])
    out = capsys.readouterr()
    lines = (out.err if code else out.out).strip().splitlines()
    assert len(lines) == 1, lines
    return code, lines[0]


def test_cluster_check_passes_a_filled_in_file_and_the_templates_as_templates(tmp_path: Path, capsys) -> None:
    code, line = _cluster([str(_filled(tmp_path))], capsys)
    assert code == 0 and line.endswith("ok (local provider, head + 2 worker(s); Ray's schema and fsrf's invariants)")
    for path in CONFIGS:
        assert _cluster([str(path), "--template"], capsys)[0] == 0


@pytest.mark.parametrize(("changes", "needle"), [
    ({}, "provider.head_ip: 'HEAD_ADDRESS' is a placeholder of the template"),  # the shipped file, unfilled
    ({"provider__head_ip": "300.1.2.3.4"}, "provider.head_ip: '300.1.2.3.4' is not an IP address or host name"),
    ({"provider__head_ip": "http://head"}, "provider.head_ip: 'http://head' is not an IP address or host name"),
    ({"provider__worker_ips": ["WORKER_ADDRESS_2"]}, "provider.worker_ips[0]: 'WORKER_ADDRESS_2' is a placeholder"),
    ({"auth__ssh_user": "USER"}, "auth.ssh_user: 'USER' is a placeholder of the template"),
    ({"auth__ssh_private_key": "/nonexistent/id_ed25519"}, "auth.ssh_private_key: /nonexistent/id_ed25519 does not exist"),
    ({"max_workers": "four"}, "max_workers: 'four' is not a count, expected a number >= 0"),
])
def test_cluster_check_names_what_a_filled_in_file_gets_wrong(tmp_path: Path, capsys, changes, needle) -> None:
    path = CLUSTER_DIR / "onprem.yaml" if not changes else _filled(tmp_path, **changes)
    code, line = _cluster([str(path)], capsys)
    assert code == 2 and line.startswith("fsrf cluster: error: ") and needle in line, line


def test_cluster_check_refuses_empty_missing_and_non_mapping_files(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    for path, needle in ((empty, "empty file, expected a Ray cluster-launcher YAML mapping"),
                         (tmp_path / "gone.yaml", "no such cluster file"),
                         (listing, "holds a list, expected a Ray cluster-launcher YAML mapping")):
        code, line = _cluster([str(path)], capsys)
        assert code == 2 and f"{path}: {needle}" in line, line
