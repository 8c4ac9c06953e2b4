"""Configs: every shipped YAML loads; bad keys, types and values fail with the key named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fsrf import (
    Config,
    FSRFError,
    config_from_dict,
    config_to_dict,
    flatten_config,
    load_config,
    save_config,
    with_overrides,
)
from fsrf.model import model_names

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_the_dataset_and_benchmark_configs_are_shipped_and_one_per_other_model() -> None:
    others = {n for n in model_names() if n != "fsrf"}
    assert {p.stem for p in SHIPPED} == {"synthetic", "mosi", "mosei", "sims", "recovery",
                                         "recovery-control-labels", "recovery-control-specific"} | others
    for name in others:
        assert load_config(CONFIG_DIR / f"{name}.yaml").model.name == name


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_names_every_field(path: Path) -> None:
    config = load_config(path)
    expected = path.stem if path.stem in ("synthetic", "mosi", "mosei", "sims") else "synthetic"
    assert config.data.dataset == expected
    # every key is written out (and so explained) in the file
    text = path.read_text()
    for dotted in flatten_config(config):
        if dotted.startswith("data.synthetic_") and config.data.dataset != "synthetic":
            continue  # only the synthetic config generates data
        if dotted.startswith(("data.domain", "data.target")) and not config.data.domains:
            continue  # only a domain-generalisation config (data.domains) reads the DG keys
        assert f"{dotted.split('.')[1]}:" in text, f"{path.name} does not spell out {dotted}"


def test_mmsa_shapes_in_modality_order() -> None:
    mosi = load_config(CONFIG_DIR / "mosi.yaml").data
    assert (mosi.text_dim, mosi.audio_dim, mosi.vision_dim) == (768, 5, 20)
    assert (mosi.text_len, mosi.audio_len, mosi.vision_len) == (50, 375, 500)
    sims = load_config(CONFIG_DIR / "sims.yaml").data
    assert (sims.audio_dim, sims.vision_dim, sims.audio_len, sims.vision_len) == (33, 709, 400, 55)


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    config = load_config(None, ["model.homo=0.25", "missing.valid_rates=[0.0, 0.5]", "curriculum.kind=step"])
    save_config(config, tmp_path / "c.yaml", provenance={"note": "test"})
    assert load_config(tmp_path / "c.yaml") == config
    assert (tmp_path / "c.yaml").stat().st_mode & 0o777 == 0o644  # readable by every reader, not 0600
    assert config_from_dict(config_to_dict(config)) == config


def test_overrides_build_a_new_config() -> None:
    base = Config()
    changed = with_overrides(base, {"model.homo": 0.1, "train.epochs": 3})
    assert changed.model.homo == 0.1 and changed.train.epochs == 3
    assert base.model.homo == 0.8  # untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.model.homo = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.hom=1"], "model.hom"),
        (["los.homo=1"], "los.homo"),
        (["model.homo=-1"], "model.homo"),
        (["model.homo=abc"], "model.homo"),
        (["train.epochs=1.5"], "train.epochs"),
        (["train.epochs=true"], "train.epochs"),
        (["model.heads=3"], "model.heads"),
        (["curriculum.kind=zigzag"], "curriculum.kind"),
        (["curriculum.start=0.9"], "curriculum.start"),
        (["curriculum.ramp_epochs=0"], "curriculum.ramp_epochs"),
        (["curriculum.kind=step", "curriculum.step_size=0"], "curriculum.step_size"),
        (["missing.complete_share=1.5"], "missing.complete_share"),
        (["missing.valid_rates=[]"], "missing.valid_rates"),
        (["missing.valid_rates=[0.1, 2]"], "missing.valid_rates"),
        (["data.dataset=imdb"], "data.dataset"),
        (["optim.lr=0"], "optim.lr"),
        (["train.device=tpu"], "train.device"),
        (["noequals"], "noequals"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], named: str) -> None:
    with pytest.raises(FSRFError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FSRFError, match="nope.yaml: no such file"):
        load_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("loss: {homo: [1,\n")
    with pytest.raises(FSRFError, match="broken.yaml: invalid YAML"):
        load_config(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("losses:\n  homo: 1\n")
    with pytest.raises(FSRFError, match="unknown.yaml: unknown section 'losses'"):
        load_config(unknown)
