"""Training and evaluation throughput of FSRF at CMU-MOSI unaligned shapes; prints JSON.

    python bench/train_throughput.py                 # CPU, configs/mosi.yaml model, 1 epoch
    python bench/train_throughput.py --device cuda --precision bf16

Data: the synthetic generator at MOSI's shapes and split sizes (text 50 x 768,
audio 375 x 5, vision 500 x 20; 1284 / 229 / 686 samples), batch 64, the model
of ``configs/mosi.yaml``. Reports

* training samples/s over whole epochs (two views per batch, every loss term);
* evaluation samples/s, and the cost of the ten-rate test evaluation
  (0.0 ... 0.9 on 686 samples) in training epochs (target: <= 2);
* the training step's achieved FLOP/s (matmul, attention and conv FLOPs counted
  by ``torch.utils.flop_counter`` for one step, forward and backward) as a share
  of this machine's float32 matrix-multiply FLOP/s measured here (target: >= 25%);
* peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsrf import EVAL_RATES, build_model, load_config, with_overrides  # noqa: E402
from fsrf._rng import draw_seed, isolated_rng, make_generator  # noqa: E402
from fsrf._run_data import load_dataset  # noqa: E402
from fsrf._steps import EpochContext, step_loss, train_epoch  # noqa: E402
from fsrf.evaluate import predict  # noqa: E402
from fsrf.missing import eval_keep  # noqa: E402


def matmul_flops(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Sustained float32 matmul FLOP/s of this device (best of a few timed rounds)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = 0.0
    for _ in range(3):
        torch.mm(a, b)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        _sync(device)
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


def machine_info(device: torch.device, precision: str) -> dict:
    """Where and at which shapes a throughput figure was measured (the head of every bench JSON here)."""
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "precision": precision,
        "shapes": {"text": [50, 768], "audio": [375, 5], "vision": [500, 20], "batch": 64},
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(ctx: EpochContext) -> float:
    """FLOPs of one training step (forward + backward) at the configured batch size."""
    cfg, model = ctx.config, ctx.model
    gen = make_generator(0)
    _, batch = next(ctx.dataset.train.batches(cfg.optim.batch_size, generator=gen))
    counter = FlopCounterMode(display=False)
    with counter:
        total, _ = step_loss(ctx, batch, max_rate=0.5)
        total.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "mosi.yaml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--epochs", type=int, default=1, help="timed training epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    config = with_overrides(config, {
        "data.dataset": "synthetic", "data.path": None,
        "data.synthetic_train": 1284, "data.synthetic_valid": 229, "data.synthetic_test": 686,
        "train.device": args.device, "train.precision": args.precision, "optim.batch_size": 64,
    })
    device = torch.device(args.device)
    dataset = load_dataset(config.data)
    gen = make_generator(config.train.seed)
    with isolated_rng(draw_seed(gen), device):
        model = build_model(config).to(device)
    ctx = EpochContext.create(config, dataset, model, device, gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    flops = step_flops(ctx)  # also warms up the allocator and kernels
    _sync(device)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        train_epoch(ctx, optimizer, scheduler, epoch=epoch + 1, max_rate=0.5)
    _sync(device)
    epoch_s = (time.perf_counter() - start) / args.epochs
    steps = len(dataset.train) // config.optim.batch_size
    trained = steps * config.optim.batch_size

    test = dataset.test
    masks = {r: eval_keep(test.valid, rate=r, seed=1111, split="test") for r in EVAL_RATES}
    predict(model, test, keep=masks[0.0], batch_size=config.train.eval_batch_size, device=device,
            precision=args.precision)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for rate in EVAL_RATES:
        predict(model, test, keep=masks[rate], batch_size=config.train.eval_batch_size, device=device,
                precision=args.precision)
    _sync(device)
    eval_s = time.perf_counter() - start

    peak = matmul_flops(device)
    achieved = flops * steps / epoch_s
    print(json.dumps({
        **machine_info(device, args.precision),
        "model": {k: getattr(config.model, k) for k in ("hidden", "heads", "encoder_layers", "downsample")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_samples_per_s": round(trained / epoch_s, 1),
        "train_epoch_s": round(epoch_s, 3),
        "train_step_gflop": round(flops / 1e9, 2),
        "train_achieved_gflop_per_s": round(achieved / 1e9, 1),
        "matmul_fp32_gflop_per_s": round(peak / 1e9, 1),
        "train_flop_share_of_matmul": round(achieved / peak, 3),
        "eval_samples_per_s": round(len(test) * len(EVAL_RATES) / eval_s, 1),
        "eval_ten_rates_test_s": round(eval_s, 3),
        "eval_ten_rates_in_train_epochs": round(eval_s / epoch_s, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "targets": {"train_flop_share_of_matmul": ">= 0.25", "eval_ten_rates_in_train_epochs": "<= 2"},
    }, indent=2))


if __name__ == "__main__":
    main()
