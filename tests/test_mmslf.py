"""MMSLF (fsrf/model/zoo/mmslf.py): the prompt CSV join, the prompt-modulated teacher, the frozen
teacher's distillation targets, and both stages through the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from tests_support import TINY

from fsrf import MODALITIES, FSRFError, config_from_dict, load_checkpoint, load_dataset, load_model
from fsrf._rng import isolated_rng
from fsrf._run_data import synthetic_data
from fsrf.cli import main
from fsrf.data import make_recovery
from fsrf.data._prompts import (
    HASH_SPACE,
    MAX_LEN,
    encode_prompt,
    fold,
    prompts_csv,
    read_prompts,
    synthetic_prompts,
)
from fsrf.data._recovery import WINDOWS
from fsrf.model import EpochInfo, TrainBatch, build_model
from fsrf.model.zoo.mmslf import MMSLF

SMALL = {**TINY["data"], "text_len": 8, "audio_len": 10, "vision_len": 10}
PROMPT = {"prompt_len": 12, "prompt_buckets": 97}


def _config(**model):
    return config_from_dict({**TINY, "data": SMALL, "model": {"name": "mmslf", "hidden": 16, **PROMPT, **model}})


def _model(seed: int = 0, **model) -> MMSLF:
    with isolated_rng(seed):
        return build_model(_config(**model))


def _batch(config, b: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dims, lens = config.data.dims(), config.data.lengths()
    x = {m: torch.randn(b, lens[m], dims[m], generator=g) for m in MODALITIES}
    valid = {m: torch.ones(b, lens[m], dtype=torch.bool) for m in MODALITIES}
    valid["vision"][1, 4:] = False
    prompt = torch.randint(1, HASH_SPACE, (b, MAX_LEN), generator=g)  # the loader's ids
    return x, valid, prompt, torch.randn(b, generator=g)


def test_the_csv_joins_on_the_mmsa_ids_and_bad_files_are_one_line_errors(tmp_path) -> None:
    good = tmp_path / "p.csv"
    good.write_text('video_id,clip_id,label,mode,prompt\nv_1,3,0.5,train,"1. Visual cues: smiles, a lot"\n'
                    "v_1,4,,test,plain words\n")
    assert read_prompts(good) == {"v_1$_$3": "1. Visual cues: smiles, a lot", "v_1$_$4": "plain words"}
    ids = encode_prompt("Smiles smiles a", length=6, buckets=50)
    # word, word, pair, word, pair (reading order), then padding
    assert ids[0] == ids[1] and len({ids[0], ids[2], ids[3], ids[4]}) == 4 and ids[-1] == 0 and all(0 <= i < 50 for i in ids)
    assert encode_prompt("smiles smiles a", length=6, buckets=50) == ids  # case-blind, stable hash
    full = torch.tensor([encode_prompt("Smiles smiles a")])
    assert full.shape == (1, MAX_LEN) and int(full.max()) < HASH_SPACE
    folded = fold(full, length=4, buckets=7)
    assert folded.shape == (1, 4) and bool(((folded >= 1) & (folded < 7)).all()) and folded[0, 0] == folded[0, 1]
    cases = {
        "missing.csv": (None, r"does not exist; per-clip prompts come from a CSV"),
        "header.csv": ("video,clip_id,prompt\nv,1,x\n", r"header.csv:1: header video,clip_id,prompt lacks column\(s\) video_id"),
        "dup.csv": ("video_id,clip_id,prompt\nv,1,a\nv,2,b\nv,1,c\n", r"dup.csv:4: duplicate id 'v\$_\$1' \(first on line 2\)"),
        "empty.csv": ("video_id,clip_id,prompt\n,1,a\n", r"empty.csv:2: empty video_id or clip_id"),
        "blank.csv": ("video_id,clip_id,prompt\nv,1,a\nv,2,  \n", r"blank.csv:3: empty prompt for clip 'v\$_\$2'"),
    }
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(FSRFError, match=message) as err:
            read_prompts(tmp_path / name)
        assert "\n" not in str(err.value)


def test_a_clip_without_a_prompt_or_no_prompt_file_stops_the_cli_with_one_line(tmp_path, capsys) -> None:
    args = ["train", "--config", "configs/mmslf.yaml", "--quiet", *(f"--set=data.{k}={v}" for k, v in SMALL.items()),
            *(f"--set=model.{k}={v}" for k, v in PROMPT.items()),
            "--set=train.epochs=2", "--set=missing.valid_rates=[0.0]"]
    short = tmp_path / "short.csv"
    short.write_text("video_id,clip_id,prompt\nsynvid0,0,hello\n")
    assert main([*args, f"--set=data.prompts={short}", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "short.csv: no prompt for clip 'synvid0$_$1' (split 'train')" in err
    assert main([*args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "reads side input(s) prompt" in err and "Generate_Prompt.py" in err
    # a row for a clip of no split (a CSV written for other data) is refused, naming its line
    full = tmp_path / "full.csv"
    assert main(["prompts", *(a for a in args if a not in ("train", "--quiet")), "--out", str(full)]) == 0
    lines = full.read_text().splitlines()
    lines.append("nosuchvid" + lines[-1][lines[-1].index(","):])
    full.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main([*args, f"--set=data.prompts={full}", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"full.csv:{len(lines)}: unknown clip 'nosuchvid$_$" in err and "1 such row(s)" in err


def test_synthetic_cues_carry_the_clean_score() -> None:
    """The cue word's rank correlates with the label far better than chance, and every clip has a row."""
    config = config_from_dict({"data": {**SMALL, "synthetic_kind": "recovery", "synthetic_train": 400}})
    data = synthetic_data(config.data)
    rows = synthetic_prompts(data, seed=0)
    assert len(rows) == sum(len(data[s]["id"]) for s in ("train", "valid", "test"))
    assert prompts_csv(rows).startswith("video_id,clip_id,mode,prompt\n")
    from fsrf.data._prompts import CUES

    rank = torch.tensor([next(i for i, w in enumerate(CUES) if f" {w}" in r[3]) for r in rows[:400]], dtype=torch.float)
    labels = torch.as_tensor(data["train"]["regression_labels"])
    assert torch.corrcoef(torch.stack([rank, labels]))[0, 1] > 0.7
    with pytest.raises(FSRFError, match="synthetic_kind: recovery"):
        synthetic_prompts(synthetic_data(config_from_dict({"data": SMALL}).data))


def test_frame_cues_put_the_sentiment_in_one_window_and_the_prompts_name_it() -> None:
    """With synthetic_cue_frames, audio/vision's window third predicts the label far better than
    the whole clip; the prompts name the window (not the label); off, nothing changes."""
    kw = {"seed": 3, "n_train": 600, "n_valid": 20, "n_test": 300}
    plain, cued = make_recovery(**kw), make_recovery(**kw, cue_frames=True)
    assert "cue_window" not in plain["train"]
    assert all(np.array_equal(plain[s][k], make_recovery(**kw, cue_frames=False)[s][k])
               for s in ("train", "test") for k in ("audio", "vision", "text", "regression_labels"))
    np.testing.assert_array_equal(cued["train"]["text"], plain["train"]["text"])  # text and labels untouched
    np.testing.assert_array_equal(cued["train"]["regression_labels"], plain["train"]["regression_labels"])
    window = cued["train"]["cue_window"]
    assert set(np.unique(window)) == {0, 1, 2} and (cued["train"]["audio_lengths"] == 40).all()

    def fit(pooled: str) -> float:  # test correlation of a linear read-out of audio+vision pooled frames
        feats = {}
        for s in ("train", "test"):
            cols = []
            for m in ("audio", "vision"):
                x, t = cued[s][m], cued[s][m].shape[1]
                third = np.minimum(np.arange(t) * 3 // t, 2)
                sel = np.ones((len(x), t)) if pooled == "all" else (third[None] == cued[s]["cue_window"][:, None])
                cols.append((x * sel[..., None]).sum(1) / sel.sum(1, keepdims=True))
            feats[s] = np.concatenate([*cols, np.ones((len(x), 1))], axis=1)
        coef, *_ = np.linalg.lstsq(feats["train"], cued["train"]["regression_labels"], rcond=None)
        return float(np.corrcoef(feats["test"] @ coef, cued["test"]["regression_labels"])[0, 1])

    assert fit("window") > fit("all") + 0.15
    rows = synthetic_prompts(cued, seed=0)
    assert all(f"the feeling shows {WINDOWS[w]} in the clip" in r[3] for r, w in zip(rows, window))
    assert not any(c in r[3] for r in rows for c in (" furious", " delighted", " neutral"))
    with pytest.raises(FSRFError, match="synthetic_cue_frames: is read by the recovery generator only"):
        config_from_dict({"data": {"synthetic_cue_frames": True}})


def test_the_teacher_reads_the_prompt_through_its_modulated_attention_and_the_student_does_not() -> None:
    model = _model().eval()
    x, valid, prompt, _ = _batch(_config())
    other = torch.randint(1, HASH_SPACE, prompt.shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        t1, t2 = model.teacher(x, valid, prompt), model.teacher(x, valid, other)
        s1 = model(x, valid, extras={"prompt": prompt})
        s2 = model(x, valid, extras={"prompt": other})
    assert not torch.allclose(t1.pred, t2.pred)
    # the prompt acts on the attention: the used maps change, the plain softmax(QK^T) does not
    assert not torch.allclose(t1.used["audio"], t2.used["audio"]) and torch.equal(t1.attn["audio"], t2.attn["audio"])
    assert torch.equal(s1.pred, s2.pred) and torch.equal(s1.pred, model.student(x, valid).pred)
    assert bool(torch.isfinite(t1.used["vision"]).all())
    assert torch.allclose(t1.used["vision"][1, :, :, 4:], torch.zeros(1))  # padding gets no attention
    with pytest.raises(FSRFError, match="the teacher reads per-clip prompts"):
        model.teacher(x, valid, None)


def test_the_student_stage_freezes_the_teacher_and_distils_its_complete_input_targets() -> None:
    config = _config(dropout=0.0)  # the student's pass recomputed below must be the same
    model = _model(dropout=0.0)
    x, valid, prompt, labels = _batch(config)
    info = EpochInfo(epoch=0, epochs=4, train=None, device=torch.device("cpu"), batch_size=8)
    model.on_epoch_start(info)
    assert not model.student_stage and not model.selectable()  # epoch 0 of 4: the teacher's
    model.on_epoch_start(EpochInfo(epoch=model.teacher_epochs, epochs=4, train=None, device=torch.device("cpu"),
                                   batch_size=8))
    assert model.student_stage and model.selectable()
    model.train()
    assert not model.teacher.training and model.student.training
    teacher0 = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student0 = {k: v.clone() for k, v in model.student.state_dict().items()}
    keep = {m: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) > 0.5 for m, v in valid.items()}
    views = {m: torch.cat([x[m] * keep[m][..., None], x[m]]) for m in MODALITIES}
    batch = TrainBatch(features=views, valid={m: v.repeat(2, 1) for m, v in valid.items()},
                       keep={m: torch.cat([keep[m], torch.ones_like(keep[m])]) for m in MODALITIES}, labels=labels,
                       complete=x, views=2, extras={"prompt": prompt})
    step = model.training_step(batch)
    with torch.no_grad():
        t = model.teacher(x, valid, prompt)  # the targets: the frozen teacher on complete input + prompts
        s = model.student(views, batch.valid)
    assert torch.allclose(step.terms["fusion"], (s.fusion - t.fusion.repeat(2, 1, 1)).abs().mean())
    attn = sum((s.attn[m] - t.attn[m].repeat(2, 1, 1, 1)).abs().mean() for m in ("audio", "vision"))
    assert torch.allclose(step.terms["attn"], attn)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = sum(p.sub(labels).abs().mean() for p in step.preds) + step.terms["attn"] + step.terms["fusion"]
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    opt.step()
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher0.items())
    assert any(not torch.equal(v, model.student.state_dict()[k]) for k, v in student0.items())


def test_both_stages_through_the_cli(tmp_path, capsys) -> None:
    base = ["--config", "configs/mmslf.yaml", *(f"--set=data.{k}={v}" for k, v in SMALL.items()),
            *(f"--set=model.{k}={v}" for k, v in PROMPT.items()),
            "--set=data.synthetic_train=160", "--set=missing.valid_rates=[0.0]", "--set=train.num_threads=1"]
    prompts = tmp_path / "prompts.csv"
    assert main(["prompts", *base, "--out", str(prompts)]) == 0
    run = [*base, f"--set=data.prompts={prompts}", "--quiet"]
    assert main(["train", *run, "--set=train.epochs=3", "--out", str(tmp_path / "both")]) == 0
    history = [json.loads(r) for r in (tmp_path / "both" / "history.jsonl").read_text().splitlines()]
    assert [r["train/loss/fusion"] > 0 for r in history] == [False, True, True]  # 1 teacher epoch, 2 student
    best = load_checkpoint(tmp_path / "both" / "best.pt")
    assert best["epoch"] >= 2 and int(best["model"]["stage"]) == 1  # never a teacher epoch
    assert main(["train", *run, "--set=train.epochs=1", "--stage", "teacher", "--out", str(tmp_path / "t")]) == 0
    teacher = load_checkpoint(tmp_path / "t" / "best.pt")["model"]
    assert main(["train", *run, "--set=train.epochs=1", "--stage", "student",
                 f"--set=model.teacher_from={tmp_path / 't' / 'best.pt'}", "--out", str(tmp_path / "s")]) == 0
    student = load_checkpoint(tmp_path / "s" / "best.pt")["model"]
    assert all(torch.equal(v, student[k]) for k, v in teacher.items() if k.startswith("teacher."))
    assert main(["evaluate", "--checkpoint", str(tmp_path / "s" / "best.pt"), "--out", str(tmp_path / "e")]) == 0
    # the student reads no prompt: evaluating and predicting with it needs no prompt file, the teacher does
    prompts.unlink()
    for run in ("both", "s"):
        best = str(tmp_path / run / "best.pt")
        assert main(["evaluate", "--checkpoint", best, "--out", str(tmp_path / f"e-{run}")]) == 0
        assert main(["predict", "--checkpoint", best, "--out", str(tmp_path / f"p-{run}.csv")]) == 0
    loaded = load_model(tmp_path / "s" / "best.pt", device="cpu")
    test = load_dataset(dataclasses.replace(loaded.config.data, prompts=None)).test
    assert not test.extras and loaded.predict(test).shape == (len(test),)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "t" / "best.pt"), "--out", str(tmp_path / "e-t")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "prompts.csv does not exist; per-clip prompts come from a CSV" in err


def test_with_bert_tokens_the_teacher_reads_its_prompts_through_the_text_encoder(tmp_path) -> None:
    """data.text_input: tokens: the prompts are tokenized by data.text_model's tokenizer (id + 1, 0 at
    padding) and the teacher encodes them with the model's BERT (a tiny random one, saved locally)."""
    from test_text_tokens import CLS, HIDDEN, SEP, UNK, _save_bert, _token_data

    from fsrf.data import save_mmsa

    bert = _save_bert(tmp_path / "bert")
    data = _token_data()
    save_mmsa(tmp_path / "tokens.pkl", data)
    ids = [str(i) for s in ("train", "valid", "test") for i in data[s]["id"]]
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("video_id,clip_id,prompt\n" + "".join(
        f"{v},{c},word{k % 7} word{k % 5} unknownword\n" for k, (v, _, c) in enumerate(i.partition("$_$") for i in ids)))
    config = config_from_dict({**TINY, "data": {**TINY["data"], "synthetic_train": 64, "synthetic_valid": 32,
                                                "synthetic_test": 32, "path": str(tmp_path / "tokens.pkl"),
                                                "text_input": "tokens", "text_model": str(bert), "text_dim": HIDDEN,
                                                "prompts": str(csv_file)},
                               "model": {"name": "mmslf", "hidden": 16, "prompt_len": 8}})
    dataset = load_dataset(config.data)
    prompt = dataset.train.extras["prompt"]  # token id + 1, 0 at padding
    assert prompt.shape[1] == MAX_LEN and prompt[0, :5].tolist() == [CLS + 1, 5 + 1, 5 + 1, UNK + 1, SEP + 1]
    assert prompt[1, :5].tolist() == [CLS + 1, 6 + 1, 6 + 1, UNK + 1, SEP + 1] and int(prompt[:, 5:].max()) == 0
    with isolated_rng(0):
        model = build_model(config).eval()
    assert not hasattr(model.teacher, "prompt_embed") and model.teacher._bert[0] is model.text_encoder
    _, b = next(dataset.train.batches(4))
    x, valid = model.encode_inputs(b.features, b.valid), b.valid
    with torch.no_grad():
        t1 = model.teacher(x, valid, b.extras["prompt"])
        t2 = model.teacher(x, valid, b.extras["prompt"].flip(0))
    assert not torch.allclose(t1.pred, t2.pred) and not torch.allclose(t1.used["audio"], t2.used["audio"])
    model.train()
    n = b.labels.shape[0]
    batch = TrainBatch(features=b.features, valid=b.valid, keep={m: torch.ones_like(v) for m, v in b.valid.items()},
                       labels=b.labels, complete=b.features, views=1, extras={"prompt": b.extras["prompt"]})
    step = model.training_step(batch)  # the teacher's stage: its prediction from the prompts through BERT
    step.preds[0].sub(b.labels).abs().mean().backward()
    assert step.preds[0].shape == (n,) and model.teacher.prompt_project.weight.grad.abs().sum() > 0
