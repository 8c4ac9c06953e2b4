"""Training: learns, reports, checkpoints, resumes exactly, and fails loudly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fsrf import OBJECTIVE, Config, FSRFError, NonFiniteLossError, load_checkpoint, train, with_overrides
from fsrf._constants import BEST_OBJECTIVE, EPOCH, LOSS_TERMS_PREFIX, robust_key
from fsrf.data import MultimodalDataset
from fsrf.losses import TERMS


def test_short_training_beats_the_mean_baseline(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    config = with_overrides(tiny_config, {"train.epochs": 8})
    result = train(config, dataset=tiny_dataset)
    baseline = (tiny_dataset.valid.labels - tiny_dataset.train.labels.mean()).abs().mean().item()
    complete_mae = result.best_metrics["valid/r0.0/MAE"]
    assert complete_mae < 0.8 * baseline
    assert result.best_objective < baseline


def test_report_once_per_epoch_with_every_metric_and_term(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    rows: list[dict[str, float]] = []
    train(tiny_config, dataset=tiny_dataset, report=lambda metrics, checkpoint: rows.append(metrics))
    assert [r[EPOCH] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    for row in rows:
        assert {f"{LOSS_TERMS_PREFIX}{t}" for t in (*TERMS, "total")} <= set(row)
        assert row[OBJECTIVE] == row[robust_key("valid", "MAE")]
        assert "valid/r0.5/Non0_F1_score" in row and "valid/robust/Corr" in row
        assert not any(k.startswith("test/") for k in row)  # the test split is never used here
        assert all(isinstance(v, float) for v in row.values())


def test_run_directory_contents(tiny_config: Config, tiny_dataset: MultimodalDataset, tmp_path: Path) -> None:
    seen: list[Path | None] = []
    train(tiny_config, dataset=tiny_dataset, out_dir=tmp_path, report=lambda m, c: seen.append(c))
    assert all(c == tmp_path / "last.pt" for c in seen)
    for name in ("config.yaml", "best.pt", "last.pt", "history.jsonl"):
        assert (tmp_path / name).is_file()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == 4
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["metrics"][OBJECTIVE] == min(h[OBJECTIVE] for h in history)
    assert not list(tmp_path.glob(".*.tmp"))


def _tensorboard_scalars(directory: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _hparams(directory: Path) -> dict[str, object]:
    """The HParams plugin records of one run folder, parsed as TensorBoard's HParams backend does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(directory))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    out: dict[str, object] = {}
    if metadata.SESSION_START_INFO_TAG in content:
        out["start"] = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    if metadata.SESSION_END_INFO_TAG in content:
        out["end"] = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    return out


def test_tensorboard_has_the_epoch_records_best_objective_and_an_hparams_session(
    tiny_config: Config, tiny_dataset: MultimodalDataset, tmp_path: Path
) -> None:
    from tensorboard.plugins.hparams import api_pb2

    result = train(tiny_config, dataset=tiny_dataset, out_dir=tmp_path)
    history = result.history
    running = [min(h[OBJECTIVE] for h in history[: i + 1]) for i in range(len(history))]
    assert [h[BEST_OBJECTIVE] for h in history] == running  # the run's value, epoch by epoch
    assert result.best_objective == history[-1][BEST_OBJECTIVE]
    board = tmp_path / "tensorboard"
    assert [v for _, v in _tensorboard_scalars(board, BEST_OBJECTIVE)] == pytest.approx(running)
    assert _tensorboard_scalars(board, "trial/pruned") == [(4, 0.0)]
    records = _hparams(board)
    params = records["start"].hparams
    assert params["model.homo"].number_value == pytest.approx(tiny_config.model.homo)
    assert params["curriculum.kind"].string_value == tiny_config.curriculum.kind
    assert params["train.epochs"].number_value == 4
    assert records["end"].status == api_pb2.STATUS_SUCCESS


def test_resume_ends_exactly_where_an_uninterrupted_run_ends(
    tiny_config: Config, tiny_dataset: MultimodalDataset, tmp_path: Path
) -> None:
    config = with_overrides(tiny_config, {"curriculum.kind": "adaptive", "curriculum.patience": 1})
    full = train(config, dataset=tiny_dataset, out_dir=tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_after_two(metrics: dict[str, float], checkpoint: Path | None) -> None:
        if metrics[EPOCH] == 2:
            raise Stop  # the process dies after epoch 2's checkpoint

    with pytest.raises(Stop):
        train(config, dataset=tiny_dataset, out_dir=tmp_path / "cut", report=stop_after_two)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    resumed = train(config, dataset=tiny_dataset, out_dir=tmp_path / "cut", resume_from=tmp_path / "cut" / "last.pt")

    assert resumed.history == full.history
    assert resumed.best_epoch == full.best_epoch
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # TensorBoard has each epoch once, equal to the uninterrupted run's
    tag = "valid/robust/MAE"
    assert _tensorboard_scalars(tmp_path / "cut" / "tensorboard", tag) == _tensorboard_scalars(
        tmp_path / "full" / "tensorboard", tag
    )


def test_resume_refuses_a_different_config(tiny_config: Config, tiny_dataset: MultimodalDataset, tmp_path: Path) -> None:
    train(with_overrides(tiny_config, {"train.epochs": 1}), dataset=tiny_dataset, out_dir=tmp_path)
    other = with_overrides(tiny_config, {"model.homo": 0.1})
    with pytest.raises(FSRFError, match="'model.homo'"):
        train(other, dataset=tiny_dataset, out_dir=tmp_path, resume_from=tmp_path / "last.pt")


def test_nan_loss_names_epoch_and_term(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    config = with_overrides(tiny_config, {"optim.lr": 1e12, "optim.grad_clip": 0.0, "optim.warmup_fraction": 0.0})
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+: loss term '\w+' is (nan|inf|-inf)"):
        train(config, dataset=tiny_dataset)


def test_shapes_must_match_the_config(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    config = with_overrides(tiny_config, {"data.audio_dim": 7})
    with pytest.raises(FSRFError, match="data.audio_dim"):
        train(config, dataset=tiny_dataset)


def test_early_stopping_uses_validation_patience(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    config = with_overrides(tiny_config, {"train.epochs": 30, "train.patience": 1, "optim.lr": 3e-2})
    result = train(config, dataset=tiny_dataset)
    assert result.stopped_early  # seeded: this run stops after its first epoch without improvement
    assert len(result.history) < 30
    last_two = [h[OBJECTIVE] for h in result.history[-2:]]
    assert last_two[1] >= result.best_objective
    assert not math.isnan(result.best_objective)


def test_training_leaves_the_global_rng_alone(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    before = torch.random.get_rng_state()
    train(with_overrides(tiny_config, {"train.epochs": 1}), dataset=tiny_dataset)
    assert torch.equal(before, torch.random.get_rng_state())
