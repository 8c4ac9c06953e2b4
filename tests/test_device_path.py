"""The GPU path on any machine: masks on the generator's device, batched evaluation, precision,
TF32, compile and deterministic settings; CUDA-only checks are skipped without a GPU."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from tests_support import TINY

from fsrf import Config, FSRFError, load_checkpoint, train, with_overrides
from fsrf._constants import EPOCH, MODALITIES
from fsrf._device import resolve_device
from fsrf._rng import isolated_rng
from fsrf.data import MultimodalDataset
from fsrf.evaluate import predict, predict_many
from fsrf.missing import SIMULATORS, eval_keep, training_rates
from fsrf.model import build_model

ROOT = Path(__file__).resolve().parents[1]
FP16_ON_CPU = "train.precision: fp16 needs a CUDA device; use bf16 or fp32 on CPU"


def needs_cuda(test: Callable[..., None]) -> Callable[..., None]:
    """Marked ``cuda`` (``pytest -m cuda``, as bench/gpu_check.sh runs them) and skipped without CUDA."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


def _valid(batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    lengths = {"text": 12, "audio": 16, "vision": 10}
    out = {}
    for m, t in lengths.items():
        real = torch.randint(2, t + 1, (batch,), generator=generator)
        out[m] = torch.arange(t).expand(batch, t) < real.unsqueeze(1)
    return out


@pytest.mark.parametrize("name", list(SIMULATORS))
def test_draw_is_sample_without_the_checks_on_the_cpu(name: str) -> None:
    sim = SIMULATORS[name]()
    valid = _valid(24, torch.Generator().manual_seed(3))
    rates = training_rates(24, max_rate=0.8, complete_share=0.2, generator=torch.Generator().manual_seed(4))
    checked = sim.sample(valid, rates, torch.Generator().manual_seed(5))
    fast = sim.draw(valid, rates.double(), torch.Generator().manual_seed(5))
    assert list(fast) == list(MODALITIES)
    assert all(torch.equal(checked[m], fast[m]) for m in MODALITIES)


@needs_cuda
def test_a_generator_on_another_device_is_refused() -> None:
    valid = _valid(4, torch.Generator().manual_seed(0))
    with pytest.raises(FSRFError, match="generator: on cuda"):
        SIMULATORS["random"]().sample(valid, torch.full((4, 3), 0.5), torch.Generator(device="cuda"))


def test_predict_many_equals_one_predict_per_mask(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    split, device = tiny_dataset.test, torch.device("cpu")
    for name in ("fsrf", "lnln", "lf_dnn"):
        with isolated_rng(7):
            model = build_model(with_overrides(tiny_config, {"model.name": name}))
        keeps = [None, *(eval_keep(split.valid, rate=r, seed=1, split="test") for r in (0.3, 0.9))]
        many = predict_many(model, split, keeps=keeps, batch_size=40, device=device)
        one = [predict(model, split, keep=k, batch_size=40, device=device) for k in keeps]
        assert all(torch.equal(a, b) for a, b in zip(many, one)), name
        assert not torch.equal(many[0], many[2])  # the masks matter


# --- train.precision, tf32, deterministic, compile -------------------------------------------


def test_fp16_on_the_cpu_is_a_one_line_error(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    with pytest.raises(FSRFError) as err:
        with_overrides(tiny_config, {"train.precision": "fp16", "train.device": "cpu"})
    assert str(err.value) == f"overrides: {FP16_ON_CPU}"
    if resolve_device("auto").type == "cpu":  # auto resolves to the CPU: refused when the run starts
        with pytest.raises(FSRFError) as err:
            train(with_overrides(tiny_config, {"train.precision": "fp16"}), dataset=tiny_dataset)
        assert str(err.value) == FP16_ON_CPU


def test_fp16_on_the_cpu_exits_2_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fsrf.cli import main

    code = main(["train", "--out", str(tmp_path / "run"), "--quiet", "--set", "train.precision=fp16",
                 "--set", "train.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [f"fsrf: error: --set: {FP16_ON_CPU}"]


@pytest.mark.parametrize("key", ["train.tf32", "train.compile", "train.deterministic"])
def test_the_new_train_keys_are_booleans(tiny_config: Config, key: str) -> None:
    assert getattr(with_overrides(tiny_config, {key: True}).train, key.split(".")[1]) is True
    with pytest.raises(FSRFError, match=rf"{key}: 'yes' has type str, expected bool"):
        with_overrides(tiny_config, {key: "yes"})


def test_tf32_and_deterministic_train_on_the_cpu_with_the_same_results(
    tiny_config: Config, tiny_dataset: MultimodalDataset
) -> None:
    config = with_overrides(tiny_config, {"train.epochs": 1})
    plain = train(config, dataset=tiny_dataset)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32)
    strict = train(with_overrides(config, {"train.tf32": True, "train.deterministic": True}), dataset=tiny_dataset)
    assert strict.history == plain.history  # on the CPU neither changes a number
    # the settings are the run's: torch's process-wide flags are as they were before it
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32) == flags


def _has_cxx() -> bool:
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++") if c)


@pytest.mark.slow
def test_compile_trains(tiny_config: Config, tiny_dataset: MultimodalDataset, capsys: pytest.CaptureFixture[str]) -> None:
    """With a C++ compiler (inductor's CPU backend needs one) the model runs compiled to the end;
    without one, compiling fails, one line says so and the run trains eagerly. Either way it trains."""
    config = with_overrides(tiny_config, {"model.name": "lf_dnn", "train.epochs": 1, "train.compile": True})
    result = train(config, dataset=tiny_dataset)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train.compile:")]
    assert len(result.history) == 1 and all(math.isfinite(v) for v in result.history[0].values())
    if _has_cxx():
        assert result.compiled and printed == []
    else:
        assert not result.compiled and len(printed) == 1


@pytest.mark.slow
def test_compile_falls_back_to_eager_without_a_compiler(tmp_path: Path) -> None:
    """No working C++ compiler (CXX names none): torch.compile fails at the first call, one line
    says why, and the run trains eagerly to the same numbers as without compile."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": {"name": "lf_dnn"}, "train": {**TINY["train"], "epochs": 1}}))
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "PYTHONPATH": str(ROOT)}

    def run(out: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fsrf.cli", "train", "--config", str(config), "--quiet",
                               "--out", str(tmp_path / out), *extra], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600, check=False)

    compiled = run("compiled", "--set", "train.compile=true")
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    lines = [line for line in compiled.stdout.splitlines() if line.startswith("train.compile:")]
    assert len(lines) == 1 and "torch.compile failed (" in lines[0] and lines[0].endswith("running eagerly")
    eager = run("eager")
    assert eager.returncode == 0, eager.stderr[-2000:]
    history = [(tmp_path / d / "history.jsonl").read_text() for d in ("compiled", "eager")]
    assert history[0] == history[1]  # the warm-up step left no trace


# --- CUDA only ---------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("name", list(SIMULATORS))
def test_a_cuda_generator_draws_the_masks_on_the_gpu(name: str) -> None:
    sim = SIMULATORS[name]()
    valid = {m: v.cuda() for m, v in _valid(32, torch.Generator().manual_seed(1)).items()}
    rates = torch.full((32, 3), 0.5, dtype=torch.float64, device="cuda")
    checked = sim.sample(valid, rates, torch.Generator(device="cuda").manual_seed(9))
    fast = sim.draw(valid, rates, torch.Generator(device="cuda").manual_seed(9))
    assert all(k.device.type == "cuda" for k in fast.values())
    assert all(torch.equal(checked[m], fast[m]) for m in MODALITIES)
    assert all(bool(fast[m][~valid[m]].all()) for m in MODALITIES)  # padding kept


def _resume_equals_uninterrupted(config: Config, dataset: MultimodalDataset, tmp_path: Path) -> None:
    full = train(config, dataset=dataset, out_dir=tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_after_two(metrics: dict[str, float], checkpoint: Path | None) -> None:
        if metrics[EPOCH] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(config, dataset=dataset, out_dir=tmp_path / "cut", report=stop_after_two)
    resumed = train(config, dataset=dataset, out_dir=tmp_path / "cut", resume_from=tmp_path / "cut" / "last.pt")
    assert resumed.history == full.history
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@needs_cuda
def test_fp16_scaler_state_round_trips_and_gpu_resume_is_exact_when_deterministic(
    tiny_config: Config, tiny_dataset: MultimodalDataset, tmp_path: Path
) -> None:
    config = with_overrides(tiny_config, {"train.device": "cuda", "train.precision": "fp16",
                                          "train.deterministic": True})
    _resume_equals_uninterrupted(config, tiny_dataset, tmp_path)
    state = load_checkpoint(tmp_path / "cut" / "last.pt")["scaler"]
    assert state["scale"] > 0 and {"growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(state)
    # the scale the resumed run reached equals the uninterrupted run's
    assert load_checkpoint(tmp_path / "full" / "last.pt")["scaler"] == state


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_resume_is_exact_when_deterministic(
    tiny_config: Config, tiny_dataset: MultimodalDataset, tmp_path: Path, precision: str
) -> None:
    config = with_overrides(tiny_config, {"train.device": "cuda", "train.precision": precision,
                                          "train.deterministic": True, "train.tf32": True})
    _resume_equals_uninterrupted(config, tiny_dataset, tmp_path)


@needs_cuda
def test_gpu_training_and_compile_run_on_cuda(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    config = with_overrides(tiny_config, {"model.name": "lf_dnn", "train.device": "cuda", "train.epochs": 1,
                                          "train.precision": "bf16", "train.compile": True})  # lf_dnn: quick to compile
    result = train(config, dataset=tiny_dataset)
    assert result.compiled
    assert all(math.isfinite(v) for v in result.history[0].values())


# --- what a search ships to its trials --------------------------------------------------------


def test_trials_receive_train_and_valid_but_never_test(tiny_config: Config, tiny_dataset: MultimodalDataset) -> None:
    from tuning._shared_data import ALL_SPLITS, from_arrays, to_arrays, trial_data

    shipped = trial_data(tiny_dataset)  # what run_search puts in the object store for fsrf_trainable
    assert {k for k in shipped if k not in ("name", "source")} == {"train", "valid"}
    assert not any(a is tiny_dataset.test.labels.numpy() for a in (shipped["train"]["labels"],
                                                                      shipped["valid"]["labels"]))
    trial = from_arrays(shipped)
    assert trial.test is None
    with pytest.raises(FSRFError, match=r"holds no 'test' split"):
        trial.split("test")
    result = train(with_overrides(tiny_config, {"train.epochs": 1}), dataset=trial)  # a trial's run needs no test
    assert len(result.history) == 1
    assert from_arrays(to_arrays(tiny_dataset, splits=ALL_SPLITS)).test is not None  # fsrf final ships all three
