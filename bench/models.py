"""Per registered model: parameters, training and evaluation throughput at CMU-MOSI unaligned
shapes, and the training step's share of this machine's matmul FLOP/s; prints JSON.

    python bench/models.py                       # every model, CPU, batch 64
    python bench/models.py --models fsrf tfn --steps 20 --device cuda
    python bench/models.py --device cuda --precision fp16 --compile --jsonl

Data: the synthetic generator at MOSI's shapes (text 50 x 768, audio 375 x 5, vision 500 x 20),
batch 64; each model from ``configs/mosi.yaml`` with ``model.name`` switched (its MOSI
defaults). Training: ``--steps`` timed steps after one warm-up step, at missing rate 0.5,
every loss term of the model; evaluation: complete-input prediction over the test split.
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

from fsrf import build_model, load_config, model_names, with_overrides
from fsrf._device import compile_model, run_settings
from fsrf._rng import draw_seed, isolated_rng, make_generator
from fsrf._run_data import load_dataset
from fsrf._steps import EpochContext, step_loss, warm_up
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


def _with_side_inputs(model, dataset, seed: int = 0):
    """``dataset`` with random side inputs for a model that reads them (mmslf's hashed prompt ids)."""
    if not model.extras:
        return dataset
    from fsrf.data._prompts import HASH_SPACE, MAX_LEN, PROMPT

    makers = {PROMPT: lambda n, g: torch.randint(1, HASH_SPACE, (n, MAX_LEN), generator=g)}
    g = torch.Generator().manual_seed(seed)
    splits = {s: dataclasses.replace(split, extras={k: makers[k](len(split), g) for k in model.extras})
              for s in ("train", "valid", "test") if (split := getattr(dataset, s)) is not None}
    return dataclasses.replace(dataset, **splits)


def measure(name: str, args: argparse.Namespace, dataset, device: torch.device, *,
            overrides: dict | None = None) -> dict:
    """One model's row; ``overrides`` (e.g. the text input) go on top of its MOSI config."""
    config = with_overrides(load_config(ROOT / "configs" / "mosi.yaml"), {"model.name": name})
    config = with_overrides(config, {
        "data.dataset": "synthetic", "data.path": None, "train.device": str(device),
        "train.precision": args.precision, "optim.batch_size": 64, **(overrides or {}),
    })
    gen = make_generator(config.train.seed)
    with isolated_rng(draw_seed(gen), device):
        model = build_model(config).to(device)
    dataset = _with_side_inputs(model, dataset)
    ctx = EpochContext.create(config, dataset, model, device, gen)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
    batches = dataset.train.batches(64, generator=gen, drop_last=True)
    scaler = ctx.scaler
    model.train()

    def step(count: bool = False) -> float:
        _, batch = next(batches)
        counter = FlopCounterMode(display=False)
        lstm = [0.0]
        hooks = [m.register_forward_hook(functools.partial(_lstm_flops, lstm)) for m in model.modules()
                 if isinstance(m, torch.nn.LSTM)] if count else []
        with counter if count else contextlib.nullcontext():
            total, _ = step_loss(ctx, batch, max_rate=0.5)
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
    predict(model, test, keep=keep, batch_size=256, device=device, precision=args.precision)  # warm-up
    _sync(device)
    start = time.perf_counter()
    predict(model, test, keep=keep, batch_size=256, device=device, precision=args.precision)
    _sync(device)
    eval_s = time.perf_counter() - start
    gpu = {"gpu_peak_mib_train": train_peak, **util.summary()} if device.type == "cuda" else {}
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "views_per_batch": ctx.views,
        "compiled": compiled is not None and compiled.active,
        "train_samples_per_s": round(64 / train_s, 1),
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
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    parser.add_argument("--jsonl", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    device = torch.device(args.device)
    base = load_config(ROOT / "configs" / "mosi.yaml")
    data = with_overrides(base, {"data.dataset": "synthetic", "data.path": None, "data.synthetic_train": 64 * (args.steps + 2),
                                 "data.synthetic_valid": 64, "data.synthetic_test": 256}).data
    dataset = load_dataset(data)
    peak = matmul_flops(device)
    models = {}
    with run_settings(device, tf32=args.tf32, deterministic=False):
        for name in args.models or model_names():
            row = measure(name, args, dataset, device)
            row["train_flop_share_of_matmul"] = round(row["train_achieved_gflop_per_s"] * 1e9 / peak, 3)
            models[name] = row
    emit({
        **machine_info(device, args.precision, compiled=args.compile, tf32=args.tf32),
        "matmul_fp32_gflop_per_s": round(peak / 1e9, 1),
        "models": models,
        "targets": {"train_flop_share_of_matmul": ">= 0.15 every model, >= 0.25 fsrf"},
    }, jsonl=args.jsonl)


if __name__ == "__main__":
    from fsrf import FSRFError

    try:
        main()
    except FSRFError as err:
        raise SystemExit(f"bench/models.py: error: {err}") from None
