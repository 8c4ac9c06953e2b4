"""Per registered model: parameters, training and evaluation throughput at CMU-MOSI unaligned
shapes, and the training step's share of this machine's matmul FLOP/s; prints JSON.

    python bench/models.py                       # every model, CPU, batch 64 (hme: 8)
    python bench/models.py --models fsrf tfn --steps 20 --device cuda
    python bench/models.py --device cuda --precision fp16 --compile --jsonl
    python bench/models.py --short --out bench/results/models-cpu-all.json --note "..."
    python bench/models.py --batch hme=16 dashfusion=32

Data: the synthetic generator at MOSI's shapes (text 50 x 768, audio 375 x 5, vision 500 x 20),
batch 64; each model from ``configs/mosi.yaml`` with ``model.name`` switched (its MOSI
defaults). A model too big for batch 64 gets a smaller batch of its own (:data:`BATCH`, or
``--batch NAME=N``), recorded as its row's ``batch``. Training: ``--steps`` timed steps after
one warm-up step, at missing rate 0.5, every loss term of the model; evaluation:
complete-input prediction over the test split. ``--short``: 2 timed steps (unless ``--steps``
is given) and a 64-sample test split, to check that every model runs, not to measure it.

Each model gets what the trainer would give it, through the model contract only: its epoch-start
hook runs once before the first step (``on_epoch_start`` of epoch 0: dashfusion's retrieval
table, hme's neighbour bank, mmslf's and cyin's stage), every step carries the batch's
training-split positions (``TrainBatch.index``: dashfusion's contrastive retrieval, hme's
own-sample exclusion), and the side inputs a model names in ``BaseModel.extras`` are drawn at
random in their documented form (:data:`SIDE_INPUTS`: mmslf's hashed prompt ids; midg's domain
index, which it reads only under ``data.domains``, not at MOSI's shapes).
FLOPs of one training step (forward and backward) are counted by
``torch.utils.flop_counter``, which counts matmuls, convolutions and attention but not the
fused LSTM kernels of lf_dnn / tfn / misa: those are added from each LSTM's shapes
(4 gates x (D + H) x H multiply-adds per step and direction, x3 for the backward).
Targets (issue): every model >= 15% of the matmul rate in training, FSRF >= 25%.
On CUDA each model also reports the peak GPU memory torch allocated in training and the GPU
utilisation ``nvidia-smi`` sampled every 100 ms during the timed steps. ``--compile`` compiles
each model as ``train.compile`` does (FLOPs counted eagerly first; compiling is warm-up, not
timed); ``--precision fp16`` steps through the gradient scaler as the trainer does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from train_throughput import (
    PRECISIONS,
    GpuMonitor,
    _sync,
    emit,
    machine_info,
    matmul_flops,
    peak_gpu_mib,
    reset_peak,
)

from fsrf import FSRFError, build_model, load_config, model_names, with_overrides
from fsrf._device import compile_model, run_settings
from fsrf._rng import draw_seed, isolated_rng, make_generator
from fsrf._run_data import load_dataset
from fsrf._steps import EpochContext, epoch_hook, step_loss, warm_up
from fsrf.evaluate import predict
from fsrf.missing import eval_keep


def _lstm_flops(total: list, module: torch.nn.LSTM, inputs: tuple, output: object) -> None:
    """Add a fused LSTM's training FLOPs (which ``FlopCounterMode`` does not see) to ``total[0]``:
    per step and direction 4 gates x (D + H) x H multiply-adds, x2 FLOPs, x3 for forward + backward."""
    x = inputs[0]
    if not isinstance(x, torch.Tensor):  # a packed sequence: the counter sees its matmuls
        return
    steps = x.shape[0] * x.shape[1]  # B x T (batch_first)
    directions = 2 if module.bidirectional else 1
    width = module.input_size + module.hidden_size
    total[0] += 3 * 2 * 4 * width * module.hidden_size * steps * directions * module.num_layers


BATCH = {"dashfusion": 8, "hme": 8}
"""Per-model training batch where 64 does not fit a 23 GB CPU machine: hme's attention dropout
materialises B x heads x T x T weights over MOSI's 500 vision steps (batch 64 ran out of memory);
dashfusion's contrastive term embeds 6 retrieved samples per anchor with gradients (batch 64 ran
out of memory; batch 8 peaked at 6.7 GB resident)."""


def _prompt_ids(n: int, g: torch.Generator, config) -> torch.Tensor:
    from fsrf.data._prompts import HASH_SPACE, MAX_LEN

    return torch.randint(1, HASH_SPACE, (n, MAX_LEN), generator=g)


def _domain_ids(n: int, g: torch.Generator, config) -> torch.Tensor:
    return torch.randint(0, max(1, len(config.data.domains)), (n,), generator=g)


SIDE_INPUTS = {"prompt": _prompt_ids, "domain": _domain_ids}
"""Side input name (``BaseModel.extras``) -> maker of random values in the loader's form, (N, ...)."""


def _with_side_inputs(model, dataset, config, seed: int = 0):
    """``dataset`` with random side inputs for each one the model reads (its instance's ``extras``).

    Raises:
        FSRFError: a side input this bench cannot make (one line naming it).
    """
    if not model.extras:
        return dataset
    unknown = [k for k in model.extras if k not in SIDE_INPUTS]
    if unknown:
        raise FSRFError(f"model {model.name!r} reads side input(s) {', '.join(unknown)} that bench/models.py "
                        f"cannot make (it makes: {', '.join(SIDE_INPUTS)}); add a maker to SIDE_INPUTS")
    g = torch.Generator().manual_seed(seed)
    splits = {s: dataclasses.replace(split, extras={k: SIDE_INPUTS[k](len(split), g, config) for k in model.extras})
              for s in ("train", "valid", "test") if (split := getattr(dataset, s)) is not None}
    return dataclasses.replace(dataset, **splits)


def _batch_sizes(pairs: list[str] | None) -> dict[str, int]:
    """:data:`BATCH` with ``--batch NAME=N`` pairs on top."""
    sizes = dict(BATCH)
    for pair in pairs or []:
        name, _, size = pair.partition("=")
        if name not in model_names() or not size.isdigit() or int(size) < 1:
            raise FSRFError(f"--batch: {pair!r} is not NAME=N with a registered model and N >= 1")
        sizes[name] = int(size)
    return sizes


def measure(name: str, args: argparse.Namespace, dataset, device: torch.device, *,
            overrides: dict | None = None, batch_size: int = 64) -> dict:
    """One model's row; ``overrides`` (e.g. the text input) go on top of its MOSI config."""
    config = with_overrides(load_config(ROOT / "configs" / "mosi.yaml"), {"model.name": name})
    config = with_overrides(config, {
        "data.dataset": "synthetic", "data.path": None, "train.device": str(device),
        "train.precision": args.precision, "optim.batch_size": batch_size, **(overrides or {}),
    })
    gen = make_generator(config.train.seed)
    with isolated_rng(draw_seed(gen), device):
        model = build_model(config).to(device)
    dataset = _with_side_inputs(model, dataset, config)
    ctx = EpochContext.create(config, dataset, model, device, gen)
    epoch_hook(ctx, epoch=0, end=False)  # what the trainer does before the first epoch
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
    batches = dataset.train.batches(batch_size, generator=gen, drop_last=True)
    scaler = ctx.scaler
    model.train()

    def step(count: bool = False) -> float:
        index, batch = next(batches)
        counter = FlopCounterMode(display=False)
        lstm = [0.0]
        hooks = [m.register_forward_hook(functools.partial(_lstm_flops, lstm)) for m in model.modules()
                 if isinstance(m, torch.nn.LSTM)] if count else []
        with counter if count else contextlib.nullcontext():
            total, _ = step_loss(ctx, batch, max_rate=0.5, index=index)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
        for hook in hooks:
            hook.remove()
        scaler.step(optimizer)
        scaler.update()
        return float(counter.get_total_flops()) + lstm[0] if count else 0.0

    flops = step(count=True)  # counted eagerly; also the warm-up
    compiled = None
    if args.compile:
        compiled = compile_model(model)
        warm_up(ctx, compiled)  # compiles the training step's forward and backward
    _sync(device)
    reset_peak(device)
    with GpuMonitor(device, "train") as util:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
        train_s = (time.perf_counter() - start) / args.steps
    train_peak = peak_gpu_mib(device)
    test = dataset.test
    keep = eval_keep(test.valid, rate=0.0, seed=1111, split="test")
    eval_batch = 4 * batch_size  # 256 at the shared batch
    predict(model, test, keep=keep, batch_size=eval_batch, device=device, precision=args.precision)  # warm-up
    _sync(device)
    start = time.perf_counter()
    predict(model, test, keep=keep, batch_size=eval_batch, device=device, precision=args.precision)
    _sync(device)
    eval_s = time.perf_counter() - start
    gpu = {"gpu_peak_mib_train": train_peak, **util.summary()} if device.type == "cuda" else {}
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch_size,
        "views_per_batch": ctx.views,
        "compiled": compiled is not None and compiled.active,
        "train_samples_per_s": round(batch_size / train_s, 1),
        "eval_batch": eval_batch,
        "train_step_gflop": round(flops / 1e9, 3),
        "train_achieved_gflop_per_s": round(flops / train_s / 1e9, 2),
        "eval_samples_per_s": round(len(test) / eval_s, 1),
        **gpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--compile", action="store_true", help="torch.compile each model (as train.compile)")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls on CUDA (as train.tf32)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per model (default 10; "
                        "--short: 2)")
    parser.add_argument("--short", action="store_true",
                        help="2 timed steps and a 64-sample test split: does every model run (not a measurement)")
    parser.add_argument("--batch", nargs="+", default=None, metavar="NAME=N",
                        help=f"a model's own training batch (default 64; {', '.join(f'{k}={v}' for k, v in BATCH.items())})")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--note", default=None, help="a note recorded in the JSON (e.g. the machine's load)")
    parser.add_argument("--jsonl", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 2 if args.short else 10
    if args.steps < 1:
        raise FSRFError(f"--steps: {args.steps} must be >= 1")
    names = args.models or list(model_names())
    unknown = [n for n in names if n not in model_names()]
    if unknown:
        raise FSRFError(f"--models: {', '.join(unknown)} not registered (registered: {', '.join(model_names())})")
    sizes = _batch_sizes(args.batch)
    device = torch.device(args.device)
    base = load_config(ROOT / "configs" / "mosi.yaml")
    widest = max([64, *(sizes.get(n, 64) for n in names)])
    data = with_overrides(base, {"data.dataset": "synthetic", "data.path": None,
                                 "data.synthetic_train": widest * (args.steps + 2), "data.synthetic_valid": 64,
                                 "data.synthetic_test": 64 if args.short else 256}).data
    dataset = load_dataset(data)
    peak = matmul_flops(device)
    models = {}
    with run_settings(device, tf32=args.tf32, deterministic=False):
        for name in names:
            row = measure(name, args, dataset, device, batch_size=sizes.get(name, 64))
            row["train_flop_share_of_matmul"] = round(row["train_achieved_gflop_per_s"] * 1e9 / peak, 3)
            models[name] = row
            print(f"bench/models.py: {name} done", file=sys.stderr, flush=True)
    payload = {
        **machine_info(device, args.precision, compiled=args.compile, tf32=args.tf32),
        **({"note": args.note} if args.note else {}),
        "short": args.short,
        "steps": args.steps,
        "matmul_fp32_gflop_per_s": round(peak / 1e9, 1),
        "models": models,
        "targets": {"train_flop_share_of_matmul": ">= 0.15 every model, >= 0.25 fsrf"},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    emit(payload, jsonl=args.jsonl)


if __name__ == "__main__":
    try:
        main()
    except FSRFError as err:
        raise SystemExit(f"bench/models.py: error: {err}") from None
