"""The model contract, checked for every registered model (``model.name``)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tests_support import TINY

from fsrf import MODALITIES, Config, FSRFError, config_from_dict, load_checkpoint, train, with_overrides
from fsrf._rng import isolated_rng
from fsrf.data._prompts import HASH_SPACE, MAX_LEN
from fsrf.missing import apply_keep, eval_keep, pattern_keep
from fsrf.model import BaseModel, build_model, model_class, model_names

NAMES = model_names()
# each dataset's feature dims (MMSA unaligned), at short lengths so the suite stays fast
DIMS = {
    "synthetic": {},
    "mosi": {"text_dim": 768, "audio_dim": 5, "vision_dim": 20},
    "mosei": {"text_dim": 768, "audio_dim": 74, "vision_dim": 35},
    "sims": {"text_dim": 768, "audio_dim": 33, "vision_dim": 709},
}


def _config(name: str, dataset: str = "synthetic", **data) -> Config:
    """The model's defaults (for ``dataset``) at tiny sizes, on tiny synthetic shapes."""
    fields = {f.name for f in dataclasses.fields(model_class(name).config_class)}
    small = {k: v for k, v in TINY["model"].items() if k in fields}
    raw = {**TINY, "model": {"name": name, **small},
           "data": {**TINY["data"], "dataset": dataset, **DIMS[dataset], **data}}
    return config_from_dict(raw, source=f"contract {name}")


def _build(config: Config, seed: int = 0) -> BaseModel:
    with isolated_rng(seed):
        return build_model(config)


# synthetic side inputs by name (Split.extras), for models that read them (BaseModel.extras)
SIDE_INPUTS = {
    "prompt": lambda config, n, g: torch.randint(1, HASH_SPACE, (n, MAX_LEN), generator=g),  # hashed prompt ids
    "domain": lambda config, n, g: torch.zeros(n, dtype=torch.long),  # one domain (no data.domains)
}


def _side(config: Config, n: int, seed: int = 0) -> dict:
    """``forward``'s side-input keyword arguments for ``config``'s model ({} for a model without extras)."""
    names = model_class(config.model.name).extras
    g = torch.Generator().manual_seed(seed + 7)
    return {"extras": {k: SIDE_INPUTS[k](config, n, g) for k in names}} if names else {}


def _with_side(config: Config, dataset):
    """``dataset`` with the side inputs ``config``'s model reads in every split's extras."""
    if not model_class(config.model.name).extras:
        return dataset
    splits = {name: dataclasses.replace(split, extras={**split.extras, **_side(config, len(split), i)["extras"]})
              for i, name in enumerate(("train", "valid", "test")) if (split := getattr(dataset, name)) is not None}
    return dataclasses.replace(dataset, **splits)


def _inputs(config: Config, batch: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dims, lens = config.data.dims(), config.data.lengths()
    x = {m: torch.randn(batch, lens[m], dims[m], generator=g) for m in MODALITIES}
    valid = {m: torch.ones(batch, lens[m], dtype=torch.bool) for m in MODALITIES}
    valid["audio"][0, lens["audio"] // 2:] = False  # padding in one sample
    return x, valid, torch.randn(batch, generator=g)


def test_registry_lists_the_models_and_rejects_unknown_names() -> None:
    assert {"fsrf", "plain"} <= set(NAMES)
    with pytest.raises(FSRFError, match=r"model.name: 'nope' is not a registered model \(registered: "):
        config_from_dict({"model": {"name": "nope"}})


def test_a_key_of_another_model_is_a_one_line_error() -> None:
    with pytest.raises(FSRFError, match=r"model.homo is a key of model fsrf, not of 'plain'") as err:
        config_from_dict({"model": {"name": "plain", "homo": 0.5}}, source="x.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("x.yaml: ")


def test_switching_model_by_override_starts_from_its_defaults() -> None:
    config = with_overrides(Config(), {"model.name": "plain", "model.hidden": 32})
    assert config.model.name == "plain" and config.model.hidden == 32
    assert not hasattr(config.model, "homo")


def test_per_dataset_defaults_fill_only_keys_a_file_does_not_give() -> None:
    mosi = config_from_dict({"data": {"dataset": "mosi"}})
    sims = config_from_dict({"data": {"dataset": "sims"}, "model": {"homo": 0.5}})
    assert (mosi.model.homo, mosi.model.diff) == (0.3, 0.1)
    assert (sims.model.homo, sims.model.recon) == (0.5, 0.8)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dataset", sorted(DIMS))
def test_builds_from_its_defaults_for_every_dataset(name: str, dataset: str) -> None:
    config = _config(name, dataset)
    model = _build(config).eval()
    x, valid, _ = _inputs(config)
    assert model(x, valid, **_side(config, 6)).pred.shape == (6,)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("missing", ["text", "audio", "vision", "rate0.9"])
def test_finite_outputs_and_gradients_with_missing_input(name: str, missing: str) -> None:
    config = _config(name)
    model = _build(config)
    x, valid, _ = _inputs(config)
    if missing == "rate0.9":
        keep = eval_keep(valid, rate=0.9, seed=3, split="test")
    else:
        keep = pattern_keep(valid, [m for m in MODALITIES if m != missing])
    out = model(apply_keep(x, keep), valid, keep=keep, **_side(config, 6))
    assert bool(torch.isfinite(out.pred).all())
    out.pred.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed_and_a_checkpoint_round_trips(name: str, tmp_path) -> None:
    config = _config(name)
    a, b = _build(config).eval(), _build(config).eval()
    x, valid, _ = _inputs(config)
    side = _side(config, 6)
    assert torch.equal(a(x, valid, **side).pred, b(x, valid, **side).pred)
    torch.save(a.state_dict(), tmp_path / "m.pt")
    c = _build(config, seed=1).eval()
    assert not torch.equal(c(x, valid, **side).pred, a(x, valid, **side).pred)
    c.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert torch.equal(c(x, valid, **side).pred, a(x, valid, **side).pred)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_runs(name: str) -> None:
    config = _config(name)
    model = _build(config)
    x, valid, _ = _inputs(config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(x, valid, **_side(config, 6)).pred
    assert bool(torch.isfinite(pred.float()).all())


@pytest.mark.parametrize("name", NAMES)
def test_training_logs_its_terms_by_name_and_beats_the_mean_predictor(name: str, tmp_path, tiny_dataset) -> None:
    config = with_overrides(_config(name), {"train.epochs": 3})
    tiny_dataset = _with_side(config, tiny_dataset)
    result = train(config, out_dir=tmp_path, dataset=tiny_dataset, tensorboard=False)
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    logged = {k.removeprefix("train/loss/") for k in rows[-1] if k.startswith("train/loss/")}
    on = {k for k, w in config.model.weights().items() if w > 0}
    assert {"task", "total"} | on <= logged
    # the validation-selected checkpoint beats predicting the training mean on complete test input
    model = build_model(config)
    model.load_state_dict(load_checkpoint(tmp_path / "best.pt")["model"])
    model.eval()
    test = tiny_dataset.test
    with torch.no_grad():
        pred = model(test.features, test.valid, **({"extras": test.extras} if model.extras else {})).pred
    mean = tiny_dataset.train.labels.mean()
    assert result.best_epoch >= 1
    assert (pred - test.labels).abs().mean() < (mean - test.labels).abs().mean()


def test_epoch_hooks_run_around_each_epoch_and_training_batches_carry_their_indices(
    tmp_path, tiny_dataset, monkeypatch
) -> None:
    """on_epoch_start / on_epoch_end bracket every epoch (eval mode, no gradients, from the
    resumed epoch on); TrainBatch.index names each sample's training-split position; a model
    that does nothing in the hooks trains exactly as before (the hooks draw from no stream)."""
    config = with_overrides(_config("plain"), {"train.epochs": 3, "train.checkpoint_every": 1})
    plain = model_class("plain")
    baseline = train(config, dataset=tiny_dataset, out_dir=tmp_path / "base", progress=False)
    calls, seen = [], []

    def start(self, info):
        calls.append(("start", info.epoch, info.epochs, self.training, torch.is_grad_enabled()))

    def end(self, info):
        rows = sum(len(i) for i, _, _ in info.batches())
        calls.append(("end", info.epoch, rows == len(info.train), self.training, torch.is_grad_enabled()))

    def step(self, batch):
        seen.append(batch.index.clone())
        return BaseModel.training_step(self, batch)

    monkeypatch.setattr(plain, "on_epoch_start", start)
    monkeypatch.setattr(plain, "on_epoch_end", end)
    monkeypatch.setattr(plain, "training_step", step)
    hooked = train(config, dataset=tiny_dataset, out_dir=tmp_path / "hooked", progress=False)
    assert calls == [c for e in range(3) for c in (("start", e, 3, False, False), ("end", e, True, False, False))]
    assert [r["objective"] for r in hooked.history] == [r["objective"] for r in baseline.history]
    n, bs = len(tiny_dataset.train), config.optim.batch_size
    first = torch.cat(seen[: n // bs])
    assert first.dtype == torch.long and len(set(first.tolist())) == len(first) and int(first.max()) < n
    calls.clear()
    train(with_overrides(config, {"train.epochs": 4}), dataset=tiny_dataset, out_dir=tmp_path / "hooked",
          resume_from=tmp_path / "hooked" / "last.pt", progress=False)
    assert [c[:2] for c in calls] == [("start", 3), ("end", 3)]


def test_side_inputs_travel_with_their_samples_and_reach_only_models_that_read_them(tiny_dataset, monkeypatch) -> None:
    """Split.extras are sliced with the samples, shipped through the object-store arrays, repeated
    per view for a model that names them in ``extras``, and a missing one is a one-line error."""
    from fsrf.data import Split
    from fsrf.model import side_inputs
    from tuning._shared_data import from_arrays, to_arrays

    split = tiny_dataset.train
    domain = torch.arange(len(split)) % 3
    with_side = Split(features=split.features, valid=split.valid, labels=split.labels, ids=split.ids,
                      extras={"domain": domain})
    batch = with_side.take(torch.tensor([4, 1]))
    assert batch.extras["domain"].tolist() == [1, 1] and split.take(torch.tensor([0])).extras == {}
    shipped = from_arrays(to_arrays(dataclasses.replace(tiny_dataset, train=with_side), splits=("train",)))
    assert torch.equal(shipped.train.extras["domain"], domain)
    model = _build(_config("plain"))
    assert side_inputs(model, batch.extras) == {}  # plain reads none: nothing passed
    monkeypatch.setattr(type(model), "extras", ("domain",))
    assert side_inputs(model, batch.extras, views=2)["extras"]["domain"].tolist() == [1, 1, 1, 1]
    with pytest.raises(FSRFError, match=r"model 'plain' reads side input\(s\) domain that the data do not hold"):
        side_inputs(model, {})
