"""``data.text_input: tokens``: text_bert ids through a real tiny BERT under the MMSA/LNLN token protocol.

The encoder is a randomly initialised ``BertModel`` (2 layers, hidden 32) saved with
``save_pretrained`` into a temporary directory with a ``vocab.txt``; the data are the
synthetic generator's, with the token ids mapped into that vocabulary. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests_support import TINY
from transformers import AutoTokenizer, BertConfig, BertModel

from fsrf import MODALITIES, Config, FSRFError, config_from_dict, save_config, train
from fsrf._rng import isolated_rng
from fsrf._run_data import load_dataset, synthetic_data
from fsrf._steps import EpochContext, step_loss
from fsrf.cli import main
from fsrf.data import load_mmsa, save_mmsa
from fsrf.evaluate import random_missing_table
from fsrf.missing import RandomDrop, apply_keep, eval_keep, pattern_keep
from fsrf.model import BaseModel, TextEncoder, build_model, model_class, model_names
from fsrf.train import _parameter_groups

PAD, UNK, CLS, SEP = 0, 1, 2, 3
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"word{i}" for i in range(95))]
HIDDEN = 32
SIZES = {"synthetic_train": 64, "synthetic_valid": 32, "synthetic_test": 32}


def _save_bert(directory: Path, *, seed: int = 0, vocab: list[str] = VOCAB) -> Path:
    config = BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    with isolated_rng(seed):
        BertModel(config).save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_bert(tmp_path_factory.mktemp("tiny-bert"))


def _token_data(*, drop_text_bert: bool = False, remap: bool = True) -> dict:
    """The synthetic dataset at tiny sizes, ids mapped into VOCAB ([CLS]/[SEP] -> 2/3, words -> 5..99)."""
    cfg = config_from_dict({"data": {**TINY["data"], **SIZES}}).data
    data = synthetic_data(cfg)
    for split in data.values():
        bert = split["text_bert"]
        if remap:
            ids, mask = bert[:, 0], bert[:, 1] > 0
            words = np.where(ids == 101, CLS, np.where(ids == 102, SEP, 5 + ids.astype(np.int64) % 95))
            bert[:, 0] = np.where(mask, words, PAD)
        if drop_text_bert:
            del split["text_bert"]
    return data


@pytest.fixture(scope="module")
def token_pickle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tokens.pkl"
    save_mmsa(path, _token_data())
    return path


def _config(bert_dir: Path | str, path: Path, model: str = "plain", *, data: dict | None = None,
            model_section: dict | None = None, **sections: dict) -> Config:
    fields = {f.name for f in dataclasses.fields(model_class(model).config_class)}
    small = {k: v for k, v in TINY["model"].items() if k in fields}
    raw = {
        **TINY,
        "data": {**TINY["data"], **SIZES, "path": str(path), "text_input": "tokens", "text_model": str(bert_dir),
                 "text_dim": HIDDEN, **(data or {})},
        "model": {"name": model, **small, **(model_section or {})},
        "train": {**TINY["train"], "epochs": 1},
        **sections,
    }
    return config_from_dict(raw, source="test_text_tokens")


def _build(config: Config, seed: int = 0) -> BaseModel:
    with isolated_rng(seed):
        return build_model(config)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --- the protocol on ids ------------------------------------------------------------------


def test_the_tokenizer_is_the_one_read_from_the_directory(bert_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bert_dir, local_files_only=True)
    encoder = TextEncoder(directory=str(bert_dir))
    assert encoder.info.unk_id == tokenizer.unk_token_id == UNK
    assert encoder.hidden_size == HIDDEN and encoder.info.vocab_size == 100


def test_tokens_mode_reads_ids_and_segments_with_the_same_validity_and_eval_masks(token_pickle: Path) -> None:
    tokens = load_mmsa(token_pickle, name="synthetic", text_input="tokens")
    features = load_mmsa(token_pickle, name="synthetic")
    raw = _token_data()
    for split in ("train", "valid", "test"):
        text = tokens.split(split).features["text"]
        assert text.shape == (len(raw[split]["id"]), TINY["data"]["text_len"], 2) and text.dtype == torch.float32
        np.testing.assert_array_equal(text[..., 0].numpy(), raw[split]["text_bert"][:, 0])
        np.testing.assert_array_equal(text[..., 1].numpy(), raw[split]["text_bert"][:, 2])
        assert torch.equal(tokens.split(split).valid["text"], features.split(split).valid["text"])
    # evaluation masks stay a pure function of (seed, rate, split) and the validity masks
    first = eval_keep(tokens.test.valid, rate=0.5, seed=1111, split="test")
    again = eval_keep(features.test.valid, rate=0.5, seed=1111, split="test")
    assert all(torch.equal(first[m], again[m]) for m in MODALITIES)


def _recorders(model: BaseModel) -> tuple[list[torch.Tensor], list[dict]]:
    """Record the ids BERT embeds and the features ``forward`` receives (real hooks, after the model's own)."""
    ids: list[torch.Tensor] = []
    seen: list[dict] = []
    model.text_encoder.model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: ids.append(args[0].clone()))
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    return ids, seen


def test_dropped_ids_become_unk_ends_are_kept_padding_is_untouched(bert_dir: Path, token_pickle: Path) -> None:
    config = _config(bert_dir, token_pickle)
    dataset = load_dataset(config.data)
    model = _build(config).eval()
    batch = dataset.test.take(torch.arange(16))
    valid = batch.valid["text"]
    stored = batch.features["text"][..., 0].long()
    keep = RandomDrop().sample(batch.valid, torch.full((16, 3), 0.6), torch.Generator().manual_seed(0))
    ids, seen = _recorders(model)
    with torch.no_grad():
        model(apply_keep(batch.features, keep), batch.valid, keep=keep)

    dropped = valid & ~keep["text"]
    assert int(dropped.sum()) > 10  # the check below is not vacuous
    expected = stored.masked_fill(dropped, UNK)
    (sent,) = ids
    assert torch.equal(sent, expected)
    lengths = valid.sum(dim=1)
    rows = torch.arange(16)
    assert bool((sent[:, 0] == CLS).all()) and bool((sent[rows, lengths - 1] == SEP).all())
    assert bool(keep["text"][:, 0].all()) and bool(keep["text"][rows, lengths - 1].all())
    assert bool((sent[~valid] == PAD).all()) and bool((~valid).any())  # padding as stored

    # the model reads BERT's last hidden state of the corrupted ids, attention on the valid positions
    (features,) = seen
    with torch.no_grad():
        reference = model.text_encoder.model(input_ids=expected, attention_mask=valid.long(),
                                             token_type_ids=torch.zeros_like(expected)).last_hidden_state
    torch.testing.assert_close(features["text"], reference * valid.unsqueeze(-1))
    assert features["text"].shape == (16, valid.shape[1], HIDDEN)
    assert bool((features["text"][~valid] == 0).all())
    for m in ("audio", "vision"):  # other modalities pass through as given
        assert torch.equal(features[m], apply_keep(batch.features, keep)[m])
    # no leak: a kept position's state changes when other words are dropped
    with torch.no_grad():
        complete = model.encode_inputs(batch.features, batch.valid)["text"]
    kept = valid & keep["text"]
    assert not torch.allclose(complete[kept], features["text"][kept], atol=1e-3)


def test_a_sample_without_text_gets_a_zero_encoding_and_bert_skips_it(bert_dir: Path, token_pickle: Path) -> None:
    config = _config(bert_dir, token_pickle)
    dataset = load_dataset(config.data)
    model = _build(config).eval()
    batch = dataset.test.take(torch.arange(8))
    gone = pattern_keep(batch.valid, ("audio", "vision"))
    whole = torch.arange(8) < 3  # samples 0-2 lose their text whole, the others keep everything
    keep = {m: torch.where(whole[:, None], gone[m], torch.ones_like(gone[m])) for m in MODALITIES}
    ids, seen = _recorders(model)
    with torch.no_grad():
        out = model(apply_keep(batch.features, keep), batch.valid, keep=keep)
    assert torch.isfinite(out.pred).all()
    assert ids[0].shape[0] == 5  # BERT ran on the five samples that have text
    text = seen[0]["text"]
    assert bool((text[:3] == 0).all()) and bool((text[3:].abs().sum(dim=(1, 2)) > 0).all())
    with torch.no_grad():
        model(apply_keep(batch.features, gone), batch.valid, keep=gone)
    assert len(ids) == 1 and bool((seen[1]["text"] == 0).all())  # no text anywhere: BERT does not run


# --- every model, training and evaluation ----------------------------------------------------


# mmslf reads a prompt CSV as well (tests/test_mmslf.py covers its path); every other model here
CASES = [(name, {}) for name in model_names() if name != "mmslf"] + [("fsrf", {"teacher": "both"})]


@pytest.mark.parametrize(("name", "section"), CASES, ids=[f"{n}{'-' + str(s) if s else ''}" for n, s in CASES])
def test_every_model_trains_a_step_on_tokens(name: str, section: dict, bert_dir: Path, token_pickle: Path) -> None:
    config = _config(bert_dir, token_pickle, name, model_section=section)
    dataset = load_dataset(config.data)
    model = _build(config)
    ctx = EpochContext.create(config, dataset, model, torch.device("cpu"), torch.Generator().manual_seed(0))
    batch = dataset.train.take(torch.arange(8))
    total, terms = step_loss(ctx, batch, max_rate=0.5)
    total.backward()
    assert torch.isfinite(total) and set(terms) >= {"task", "total"}
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for p in model.text_encoder.model.parameters())  # frozen


def test_train_then_evaluate_end_to_end_with_a_frozen_encoder(bert_dir: Path, token_pickle: Path,
                                                               tmp_path: Path) -> None:
    config = _config(bert_dir, token_pickle, "fsrf", train={**TINY["train"], "epochs": 2},
                     missing={"valid_rates": [0.0, 0.5]})
    result = train(config, out_dir=tmp_path / "run", tensorboard=False)
    assert result.best_epoch in (1, 2) and np.isfinite(result.best_objective)
    state = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=True)
    assert "text_encoder.fingerprint" in state["model"]
    assert not any(k.startswith("text_encoder.bert") for k in state["model"])  # frozen: reloaded from the directory
    resumable = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert len(resumable["optimizer"]["param_groups"]) == 1

    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--device", "cpu",
                 "--out", str(out)])
    assert code == 0
    for stem in ("robustness_random", "robustness_patterns"):
        table = json.loads((out / f"{stem}.json").read_text())
        assert table["text_protocol"] == "tokens"
        assert all(np.isfinite(row["MAE"]) for row in table["rows"].values())


def test_evaluation_is_a_pure_function_of_the_model_and_masks(bert_dir: Path, token_pickle: Path) -> None:
    config = _config(bert_dir, token_pickle)
    dataset = load_dataset(config.data)
    first = random_missing_table(_build(config), dataset.test, dataset="synthetic", split_name="test",
                                 seed=1111, rates=(0.0, 0.5))
    again = random_missing_table(_build(config), dataset.test, dataset="synthetic", split_name="test",
                                 seed=1111, rates=(0.0, 0.5))
    assert first.rows == again.rows and first.text_protocol == "tokens"
    assert first.rows["0.0"] != first.rows["0.5"]


def test_features_mode_results_say_features_approx(tiny_config: Config, tiny_dataset) -> None:
    with isolated_rng(0):
        model = build_model(tiny_config)
    table = random_missing_table(model, tiny_dataset.test, dataset="synthetic", split_name="test", seed=1111,
                                 rates=(0.0,))
    assert json.loads(table.to_json())["text_protocol"] == "features-approx"
    assert tiny_config.data.text_protocol() == "features-approx"
    assert not hasattr(model, "text_encoder")


# --- frozen, fine-tuned, checkpointing, checkpoints -----------------------------------------


def _loss(model: BaseModel, config: Config, dataset, seed: int = 3) -> torch.Tensor:
    batch = dataset.train.take(torch.arange(8))
    keep = RandomDrop().sample(batch.valid, torch.full((8, 3), 0.3), torch.Generator().manual_seed(1))
    with isolated_rng(seed):
        return model(apply_keep(batch.features, keep), batch.valid, keep=keep).pred.pow(2).mean()


def test_a_frozen_encoder_gets_no_gradient_and_a_fine_tuned_one_does(bert_dir: Path, token_pickle: Path) -> None:
    frozen_cfg = _config(bert_dir, token_pickle)
    dataset = load_dataset(frozen_cfg.data)
    frozen = _build(frozen_cfg).train()
    bert = frozen.text_encoder.model
    assert not bert.training and not any(p.requires_grad for p in bert.parameters())
    assert not {id(p) for p in bert.parameters()} & {id(p) for p in frozen.parameters()}
    _loss(frozen, frozen_cfg, dataset).backward()
    assert all(p.grad is None for p in bert.parameters())
    assert any(p.grad is not None for p in frozen.parameters())
    assert len(_parameter_groups(frozen, frozen_cfg)) == 1

    tuned_cfg = _config(bert_dir, token_pickle, data={"text_finetune": True}, optim={**TINY["optim"], "text_lr": 2e-5})
    tuned = _build(tuned_cfg).train()
    bert = tuned.text_encoder.model
    assert bert.training and {id(p) for p in bert.parameters()} <= {id(p) for p in tuned.parameters()}
    _loss(tuned, tuned_cfg, dataset).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in bert.parameters())
    groups = _parameter_groups(tuned, tuned_cfg)
    assert len(groups) == 2 and groups[1]["lr"] == 2e-5
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in bert.parameters()}
    assert any(k.startswith("text_encoder.bert.") for k in tuned.state_dict())


def test_activation_checkpointing_gives_the_same_gradients(bert_dir: Path, token_pickle: Path) -> None:
    grads = []
    for checkpointing in (False, True):
        config = _config(bert_dir, token_pickle, data={"text_finetune": True, "text_checkpointing": checkpointing})
        dataset = load_dataset(config.data)
        model = _build(config).train()
        bert = model.text_encoder.model
        engaged = bert.is_activation_checkpointing if hasattr(bert, "is_activation_checkpointing") else (
            bert.is_gradient_checkpointing)  # transformers < 5
        assert engaged is checkpointing
        _loss(model, config, dataset).backward()
        grads.append([p.grad.clone() for p in bert.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_a_fine_tuned_encoder_is_checkpointed_and_round_trips(bert_dir: Path, token_pickle: Path,
                                                              tmp_path: Path) -> None:
    config = _config(bert_dir, token_pickle, data={"text_finetune": True}, optim={**TINY["optim"], "text_lr": 1e-3})
    train(config, out_dir=tmp_path / "run", tensorboard=False)
    state = torch.load(tmp_path / "run" / "best.pt", map_location="cpu", weights_only=True)
    key = "text_encoder.bert.embeddings.word_embeddings.weight"
    fresh = _build(config)
    assert not torch.equal(state["model"][key], fresh.state_dict()[key])  # it was trained
    fresh.load_state_dict(state["model"])
    assert torch.equal(fresh.text_encoder.model.get_input_embeddings().weight, state["model"][key])
    last = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert [g["initial_lr"] for g in last["optimizer"]["param_groups"]] == [TINY["optim"]["lr"], 1e-3]


def test_a_frozen_checkpoint_refuses_a_directory_with_other_weights(bert_dir: Path, token_pickle: Path,
                                                                   tmp_path: Path) -> None:
    state = _build(_config(bert_dir, token_pickle)).state_dict()
    again = _build(_config(bert_dir, token_pickle), seed=5)
    again.load_state_dict(state)  # same directory: fine
    other = _save_bert(tmp_path / "other", seed=1)
    changed = _build(_config(other, token_pickle))
    with pytest.raises(FSRFError, match="other weights") as err:
        changed.load_state_dict(state)
    assert str(other) in _one_line(err)


# --- one-line errors -----------------------------------------------------------------------


def test_a_missing_or_incomplete_directory_is_one_line_saying_how_to_get_the_weights(
    bert_dir: Path, token_pickle: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-bert"
    with pytest.raises(FSRFError) as err:
        load_dataset(_config(missing, token_pickle).data)
    message = _one_line(err)
    for part in (f"data.text_model: {missing}", "no such directory", "save_pretrained", "bert-base-uncased",
                 "bert-base-chinese"):
        assert part in message
    with pytest.raises(FSRFError, match="no such directory"):
        _build(_config(missing, token_pickle))

    no_weights = tmp_path / "config-only"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((bert_dir / "config.json").read_text())
    with pytest.raises(FSRFError, match="missing the weights") as err:
        TextEncoder(directory=str(no_weights))
    assert str(no_weights) in _one_line(err) and "bert-base-uncased" in str(err.value)

    no_vocab = _save_bert(tmp_path / "no-vocab")
    (no_vocab / "vocab.txt").unlink()
    with pytest.raises(FSRFError, match="missing the tokenizer files") as err:
        TextEncoder(directory=str(no_vocab))
    assert str(no_vocab) in _one_line(err)


def test_a_vocabulary_without_unk_is_one_line(tmp_path: Path, token_pickle: Path) -> None:
    directory = _save_bert(tmp_path / "no-unk", vocab=[w for w in VOCAB if w != "[UNK]"] + ["extra"])
    with pytest.raises(FSRFError, match=r"no \[UNK\] token") as err:
        load_dataset(_config(directory, token_pickle).data)
    assert str(directory) in _one_line(err)


def test_tokens_on_a_pickle_without_text_bert_names_the_file_and_key(bert_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "no-text-bert.pkl"
    save_mmsa(path, _token_data(drop_text_bert=True))
    with pytest.raises(FSRFError) as err:
        load_dataset(_config(bert_dir, path).data)
    message = _one_line(err)
    assert str(path) in message and "'text_bert'" in message and "split 'train'" in message
    features = {**TINY["data"], **SIZES, "path": str(path)}
    assert load_dataset(config_from_dict({"data": features}).data).train.dims()["text"] == 32  # features still load


def test_ids_outside_the_vocabulary_and_a_text_dim_mismatch_are_one_line(bert_dir: Path, tmp_path: Path,
                                                                        token_pickle: Path) -> None:
    path = tmp_path / "raw-ids.pkl"
    save_mmsa(path, _token_data(remap=False))  # the generator's ids (1000-30000) are no ids of VOCAB
    with pytest.raises(FSRFError, match="outside the vocabulary of 100 ids") as err:
        load_dataset(_config(bert_dir, path).data)
    assert str(path) in _one_line(err) and "text_bert" in str(err.value)

    wrong = _config(bert_dir, token_pickle, data={"text_dim": 16})
    with pytest.raises(FSRFError) as err:
        load_dataset(wrong.data)
    assert _one_line(err) == (f"data.text_dim: config says 16 but the text encoder in {bert_dir} has hidden_size "
                              f"32 (set data.text_dim=32)")
    with pytest.raises(FSRFError, match="data.text_dim: config says 16"):
        _build(wrong)


def test_the_cli_exits_2_with_one_line(token_pickle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "absent-bert"
    save_config(_config(missing, token_pickle), tmp_path / "tokens.yaml")
    code = main(["train", "--config", str(tmp_path / "tokens.yaml"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("fsrf: error: data.text_model: ") and str(missing) in err


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"text_input": "tokens"}, "data.text_model"),
        ({"text_input": "words"}, "data.text_input"),
        ({"text_model": "/models/bert"}, "data.text_model"),
        ({"text_finetune": True}, "data.text_finetune"),
        ({"text_input": "tokens", "text_model": "/m", "text_checkpointing": True}, "data.text_checkpointing"),
    ],
)
def test_config_errors_name_the_key(data: dict, named: str) -> None:
    with pytest.raises(FSRFError) as err:
        config_from_dict({"data": data}, source="c.yaml")
    assert _one_line(err).startswith(f"c.yaml: {named}")
    with pytest.raises(FSRFError, match="optim.text_lr"):
        config_from_dict({"optim": {"text_lr": 0.0}}, source="c.yaml")


def test_fsrf_imports_no_transformers_until_tokens_are_used() -> None:
    code = ("import sys, torch, fsrf\n"
            "from fsrf._rng import isolated_rng\n"
            "with isolated_rng(0):\n"
            "    fsrf.build_model(fsrf.Config())\n"
            "print(sorted(m for m in ('transformers', 'ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
