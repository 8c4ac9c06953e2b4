"""Per registered model: parameters, training and evaluation throughput at CMU-MOSI unaligned
shapes, and the training step's share of this machine's matmul FLOP/s; prints JSON.

    python bench/models.py                       # every model, CPU, batch 64
    python bench/models.py --models fsrf tfn --steps 20 --device cuda

Data: the synthetic generator at MOSI's shapes (text 50 x 768, audio 375 x 5, vision 500 x 20),
batch 64; each model from ``configs/mosi.yaml`` with ``model.name`` switched (its MOSI
defaults). Training: ``--steps`` timed steps after one warm-up step, at missing rate 0.5,
every loss term of the model; evaluation: complete-input prediction over the test split.
FLOPs of one training step (forward and backward) are counted by
``torch.utils.flop_counter``, which counts matmuls, convolutions and attention but not the
fused LSTM kernels of lf_dnn / tfn / misa, so their share is a lower bound.
Targets (issue): every model >= 15% of the matmul rate in training, FSRF >= 25%.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from train_throughput import _sync, machine_info, matmul_flops  # noqa: E402
from fsrf import build_model, load_config, model_names, with_overrides  # noqa: E402
from fsrf._rng import draw_seed, isolated_rng, make_generator  # noqa: E402
from fsrf._run_data import load_dataset  # noqa: E402
from fsrf._steps import EpochContext, step_loss  # noqa: E402
from fsrf.evaluate import predict  # noqa: E402
from fsrf.missing import eval_keep  # noqa: E402


def measure(name: str, args: argparse.Namespace, dataset, device: torch.device) -> dict:
    config = with_overrides(load_config(ROOT / "configs" / "mosi.yaml"), {"model.name": name})
    config = with_overrides(config, {
        "data.dataset": "synthetic", "data.path": None, "train.device": str(device),
        "train.precision": args.precision, "optim.batch_size": 64,
    })
    gen = make_generator(config.train.seed)
    with isolated_rng(draw_seed(gen), device):
        model = build_model(config).to(device)
    ctx = EpochContext.create(config, dataset, model, device, gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = dataset.train.batches(64, generator=gen, drop_last=True)
    model.train()

    def step(count: bool = False) -> float:
        _, batch = next(batches)
        counter = FlopCounterMode(display=False)
        with counter if count else contextlib.nullcontext():
            total, _ = step_loss(ctx, batch, max_rate=0.5)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
        optimizer.step()
        return float(counter.get_total_flops()) if count else 0.0

    flops = step(count=True)  # also the warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    train_s = (time.perf_counter() - start) / args.steps
    test = dataset.test
    keep = eval_keep(test.valid, rate=0.0, seed=1111, split="test")
    predict(model, test, keep=keep, batch_size=256, device=device, precision=args.precision)  # warm-up
    _sync(device)
    start = time.perf_counter()
    predict(model, test, keep=keep, batch_size=256, device=device, precision=args.precision)
    _sync(device)
    eval_s = time.perf_counter() - start
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "views_per_batch": ctx.views,
        "train_samples_per_s": round(64 / train_s, 1),
        "train_step_gflop": round(flops / 1e9, 3),
        "train_achieved_gflop_per_s": round(flops / train_s / 1e9, 2),
        "eval_samples_per_s": round(len(test) / eval_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    args = parser.parse_args()
    device = torch.device(args.device)
    base = load_config(ROOT / "configs" / "mosi.yaml")
    data = with_overrides(base, {"data.dataset": "synthetic", "data.path": None, "data.synthetic_train": 64 * (args.steps + 2),
                                 "data.synthetic_valid": 64, "data.synthetic_test": 256}).data
    dataset = load_dataset(data)
    peak = matmul_flops(device)
    models = {}
    for name in args.models or model_names():
        row = measure(name, args, dataset, device)
        row["train_flop_share_of_matmul"] = round(row["train_achieved_gflop_per_s"] * 1e9 / peak, 3)
        models[name] = row
    print(json.dumps({
        **machine_info(device, args.precision),
        "matmul_fp32_gflop_per_s": round(peak / 1e9, 1),
        "models": models,
        "targets": {"train_flop_share_of_matmul": ">= 0.15 every model, >= 0.25 fsrf"},
    }, indent=2))


if __name__ == "__main__":
    main()
