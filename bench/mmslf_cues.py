"""Does MMSLF's teacher read its prompts, and does distilling it help? Prints (or writes) JSON.

    python bench/mmslf_cues.py --seeds 1111 1112 1113 --epochs 6 --out bench/results/mmslf-frame-cues.json

(``bench/results/mmslf-recovery.json``, the same measurement on the default cue words, was run by
hand before this script existed; ``--cue-words`` repeats it here: prompts with sentiment cue words
on the plain recovery data.)

Data: ``configs/mmslf.yaml`` (the recovery benchmark) with ``data.synthetic_cue_frames: true``
(audio / vision carry the sentiment in one random third of their frames, distractors elsewhere)
and the prompts of ``fsrf prompts`` (which third: early, middle, late), one data seed. Per
training seed:

* ``teacher``: ``model.stage: teacher`` on the true prompts;
* ``teacher_shuffled`` (the control): the same, on prompts permuted between the clips of each
  split (a fixed permutation), so they say nothing about the clip;
* ``student``: ``model.stage: student`` distilled from that seed's ``teacher`` (alpha, beta, gamma
  of the config);
* ``nodistill``: the same student with beta = gamma = 0 (the task loss only).

Every run's validation-selected checkpoint is evaluated on test: ``random_mae`` (mean MAE over
missing rates 0.0 .. 0.9, seed ``missing.eval_seed``), ``pattern_mae`` (mean over the six
incomplete whole-modality patterns), ``complete_mae``. The true-prompt teachers are also
evaluated with their test prompts permuted (``prompt_swap``: how much a teacher reads its prompts).
Paired differences over seeds: mean, SD, per seed (negative MAE: the first is better).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsrf import build_model, load_checkpoint, load_config, load_dataset, train, with_overrides
from fsrf.evaluate import modality_pattern_table, random_missing_table

METRICS = ("random_mae", "pattern_mae", "complete_mae")
PAIRS = (("teacher", "teacher_shuffled"), ("student", "nodistill"), ("teacher", "nodistill"),
         ("student", "teacher"))


def write_prompts(config: Any, path: Path, *, shuffled: bool, seed: int = 0) -> None:
    """The synthetic prompt CSV of ``config`` (``fsrf prompts``), or its prompts permuted between
    the clips of each split."""
    import numpy as np

    from fsrf._run_data import synthetic_data
    from fsrf.data._prompts import prompts_csv, synthetic_prompts

    rows = synthetic_prompts(synthetic_data(config.data), seed=0)
    if shuffled:
        rng = np.random.default_rng(seed)
        out = []
        for split in ("train", "valid", "test"):
            part = [r for r in rows if r[2] == split]
            perm = rng.permutation(len(part))
            out += [(*r[:3], part[j][3]) for r, j in zip(part, perm)]
        rows = out
    path.write_text(prompts_csv(rows))


def evaluate(config: Any, checkpoint: Path, dataset: Any, *, swap: bool = False) -> dict[str, float]:
    """Test metrics of ``checkpoint`` (with the test prompts permuted when ``swap``)."""
    import torch

    model = build_model(config)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    test = dataset.test
    if swap:
        perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
        test = dataclasses.replace(test, extras={**test.extras, "prompt": test.extras["prompt"][perm]})
    common = {"dataset": dataset.name, "batch_size": config.train.eval_batch_size}
    rand = random_missing_table(model, test, split_name="test", seed=config.missing.eval_seed, **common).rows
    pat = modality_pattern_table(model, test, **common).rows
    return {"random_mae": rand["Average"]["MAE"], "pattern_mae": pat["Average"]["MAE"],
            "complete_mae": pat["complete"]["MAE"]}


def window_attention(config: Any, checkpoint: Path, dataset: Any) -> dict[str, float] | None:
    """The teacher's share of last-layer text->audio / text->vision attention (mean over heads
    and text tokens, complete test input) on each clip's cue window, modulated (``used``) and
    plain (``raw``); 1/3 is a uniform spread. None without frame cues."""
    import torch

    from fsrf._run_data import synthetic_data
    from fsrf.data._recovery import WINDOWS

    test = synthetic_data(config.data)["test"]
    if "cue_window" not in test:
        return None
    model = build_model(config)
    model.load_state_dict(load_checkpoint(checkpoint)["model"])
    model.eval()
    assert [str(i) for i in test["id"]] == list(dataset.test.ids), "the test split's order differs"
    window = torch.as_tensor(test["cue_window"])
    shares: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for index, batch in dataset.test.batches(config.train.eval_batch_size):
            out = model.teacher(batch.features, batch.valid, batch.extras["prompt"])
            for m in ("audio", "vision"):
                t = out.used[m].shape[-1]
                third = torch.clamp(torch.arange(t) * len(WINDOWS) // t, max=len(WINDOWS) - 1)
                inside = (third[None, :] == window[index][:, None]).float()  # (B, T_m)
                for kind, maps in (("used", out.used), ("raw", out.attn)):
                    mass = maps[m].mean(dim=(1, 2))  # (B, T_m)
                    shares.setdefault(f"{m}_{kind}", []).append((mass * inside).sum(-1))
    return {k: round(float(torch.cat(v).mean()), 4) for k, v in shares.items()}


def run_one(config: Any, out_dir: str, swap: bool) -> dict[str, Any]:
    """Train ``config`` into ``out_dir``; its best checkpoint's test metrics (and with swapped prompts)."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    dataset = load_dataset(config.data)
    result = train(config, out_dir=out_dir, dataset=dataset, tensorboard=False)
    best = Path(out_dir) / "best.pt"
    out: dict[str, Any] = {**evaluate(config, best, dataset), "best_epoch": result.best_epoch,
                           "valid_objective": result.best_objective}
    if config.model.stage == "teacher":
        out["window_attention"] = window_attention(config, best, dataset)
    if swap:
        out["prompt_swap"] = evaluate(config, best, dataset, swap=True)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "per_seed": [round(v, 4) for v in values]}


def window_probe(config: Any) -> dict[str, Any] | None:
    """Is there something for the prompts to point at? A least-squares read-out of the label from
    audio + vision frames averaged over the whole clip vs over the cue window only (fit on train,
    scored on test: MAE and correlation). None without frame cues."""
    import numpy as np

    from fsrf._run_data import synthetic_data
    from fsrf.data._recovery import WINDOWS

    data = synthetic_data(config.data)
    if "cue_window" not in data["train"]:
        return None

    def pooled(split: dict[str, Any], window_only: bool) -> np.ndarray:
        cols = []
        for m in ("audio", "vision"):
            x = np.asarray(split[m], dtype=np.float64)
            t = x.shape[1]
            third = np.minimum(np.arange(t) * len(WINDOWS) // t, len(WINDOWS) - 1)
            sel = (third[None] == split["cue_window"][:, None]) if window_only else np.ones(x.shape[:2], bool)
            cols.append((x * sel[..., None]).sum(1) / sel.sum(1, keepdims=True))
        return np.concatenate([*cols, np.ones((x.shape[0], 1))], axis=1)

    out: dict[str, Any] = {"what": window_probe.__doc__.split("\n\n")[0].replace("\n    ", " ")}
    y, y_test = np.asarray(data["train"]["regression_labels"]), np.asarray(data["test"]["regression_labels"])
    for name, only in (("whole_clip", False), ("window_only", True)):
        coef, *_ = np.linalg.lstsq(pooled(data["train"], only), y, rcond=None)
        pred = pooled(data["test"], only) @ coef
        out[name] = {"test_mae": round(float(np.abs(pred - y_test).mean()), 4),
                     "test_corr": round(float(np.corrcoef(pred, y_test)[0, 1]), 4)}
    out["mean_predictor_test_mae"] = round(float(np.abs(np.median(y) - y_test).mean()), 4)
    return out


def window_summary(runs: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Mean / SD over seeds of each teacher's share of attention on the cue window (1/3: uniform)."""
    out: dict[str, Any] = {"what": window_attention.__doc__.split("\n\n")[0].replace("\n    ", " ")}
    for name in ("teacher", "teacher_shuffled"):
        per = [runs[f"{name}-{s}"].get("window_attention") for s in seeds]
        if all(per):
            out[name] = {k: _stats([p[k] for p in per]) for k in per[0]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "mmslf.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=6, help="train.epochs of each stage (teacher, student)")
    p.add_argument("--cue-words", action="store_true",
                   help="the default prompts (sentiment cue words) on the plain recovery data instead of frame cues")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
    p.add_argument("--teacher-only", action="store_true", help="train the teachers and their control only")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--runs", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here (default: print it)")
    args = p.parse_args(argv)

    common = {"data.synthetic_seed": args.data_seed, "data.synthetic_cue_frames": not args.cue_words,
              "train.epochs": args.epochs, "curriculum.ramp_epochs": args.epochs, "train.num_threads": 1}
    base = with_overrides(load_config(args.config, args.set), common)
    scratch = None if args.runs else tempfile.TemporaryDirectory(prefix="fsrf-mmslf-cues-")
    root = args.runs or Path(scratch.name)
    root.mkdir(parents=True, exist_ok=True)
    prompts = {k: root / f"prompts-{k}.csv" for k in ("true", "shuffled")}
    for k, path in prompts.items():
        write_prompts(base, path, shuffled=k == "shuffled")
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        jobs = {}
        for seed in args.seeds:
            for name, which in (("teacher", "true"), ("teacher_shuffled", "shuffled")):
                cfg = with_overrides(base, {"train.seed": seed, "model.stage": "teacher",
                                            "data.prompts": str(prompts[which])})
                jobs[f"{name}-{seed}"] = pool.submit(run_one, cfg, str(root / f"{name}-{seed}"), name == "teacher")
        runs.update({k: f.result() for k, f in jobs.items()})
        jobs = {}
        for seed in [] if args.teacher_only else args.seeds:
            for name, extra in (("student", {}), ("nodistill", {"model.beta": 0.0, "model.gamma": 0.0})):
                cfg = with_overrides(base, {"train.seed": seed, "model.stage": "student",
                                            "model.teacher_from": str(root / f"teacher-{seed}" / "best.pt"),
                                            "data.prompts": str(prompts["true"]), **extra})
                jobs[f"{name}-{seed}"] = pool.submit(run_one, cfg, str(root / f"{name}-{seed}"), False)
        runs.update({k: f.result() for k, f in jobs.items()})
    if scratch is not None:
        scratch.cleanup()

    def values(name: str, metric: str) -> list[float]:
        return [runs[f"{name}-{s}"][metric] for s in args.seeds]

    names = ("teacher", "teacher_shuffled") if args.teacher_only else ("teacher", "teacher_shuffled", "student", "nodistill")
    swap = {m: [runs[f"teacher-{s}"]["prompt_swap"][m] - runs[f"teacher-{s}"][m] for s in args.seeds]
            for m in METRICS}
    report = {
        "setup": {
            "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
            "data": "recovery benchmark, cue words (default prompts)" if args.cue_words else
                    "recovery benchmark with data.synthetic_cue_frames: true; prompts name the window (early|middle|late)",
            "data_seed": args.data_seed, "seeds": args.seeds, "epochs_per_stage": args.epochs,
            "overrides": [*args.set, *(f"{k}={v}" for k, v in common.items())],
            "command": "python bench/mmslf_cues.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "metric": "test MAE of the validation-selected checkpoint: random_mae mean over rates 0.0..0.9; "
                      "pattern_mae mean over the 6 incomplete modality patterns; complete_mae",
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "runs": runs,
        "summary": {n: {m: _stats(values(n, m)) for m in METRICS} for n in names},
        "paired_differences": {f"{a} - {b}": {m: _stats([x - y for x, y in zip(values(a, m), values(b, m))])
                                              for m in METRICS} for a, b in PAIRS if a in names and b in names},
        "window_probe": window_probe(base),
        "window_attention": window_summary(runs, args.seeds),
        "prompt_swap": {"what": "teacher's test MAE with the test prompts permuted between clips minus with "
                                "the right prompts (positive: it reads them)",
                        **{m: _stats(v) for m, v in swap.items()}},
    }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
