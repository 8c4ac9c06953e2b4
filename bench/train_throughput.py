"""Training and evaluation throughput of FSRF at CMU-MOSI unaligned shapes; prints JSON.

    python bench/train_throughput.py                 # CPU, configs/mosi.yaml model, 1 epoch
    python bench/train_throughput.py --device cuda --precision bf16
    python bench/train_throughput.py --device cuda --precision fp16 --compile --epochs 3 --jsonl

Data: the synthetic generator at MOSI's shapes and split sizes (text 50 x 768,
audio 375 x 5, vision 500 x 20; 1284 / 229 / 686 samples), batch 64, the model
of ``configs/mosi.yaml``. Reports

* training samples/s over whole epochs (two views per batch, every loss term);
* evaluation samples/s, and the cost of the ten-rate test evaluation
  (0.0 ... 0.9 on 686 samples) in training epochs (target: <= 2);
* the training step's achieved FLOP/s (matmul, attention and conv FLOPs counted
  by ``torch.utils.flop_counter`` for one step, forward and backward) as a share
  of this machine's float32 matrix-multiply FLOP/s measured here (target: >= 25%);
* peak resident memory; on CUDA also the peak GPU memory allocated by torch
  (``torch.cuda.max_memory_allocated``) and the GPU utilisation that ``nvidia-smi``
  samples every 100 ms during the timed training epochs and the timed evaluation.

The training path is the trainer's (:func:`fsrf._steps.train_epoch`: pinned non-blocking
copies, masks drawn on the device, one read-back per epoch; fp16 with its gradient scaler;
fused AdamW on CUDA). ``--compile`` compiles the model as ``train.compile`` does (its FLOPs are
counted eagerly before); the first compiled step and evaluation are warm-up, not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsrf import EVAL_RATES, build_model, load_config, with_overrides
from fsrf._device import compile_model, run_settings
from fsrf._rng import draw_seed, isolated_rng, make_generator
from fsrf._run_data import load_dataset
from fsrf._steps import EpochContext, step_loss, train_epoch, warm_up
from fsrf.evaluate import predict_many
from fsrf.missing import eval_keep

PRECISIONS = ("fp32", "bf16", "fp16")


class GpuMonitor:
    """GPU utilisation (%) sampled by ``nvidia-smi`` every 100 ms while the block runs.

    Without CUDA or ``nvidia-smi`` it samples nothing and :meth:`summary` is empty.
    """

    def __init__(self, device: torch.device, name: str) -> None:
        self.device, self.name = device, name
        self.samples: list[float] = []
        self._proc: subprocess.Popen[str] | None = None

    def _gpu_id(self) -> str:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)  # robust to CUDA_VISIBLE_DEVICES
        return f"GPU-{uuid}" if uuid else str(index)

    def __enter__(self) -> Self:
        if self.device.type == "cuda" and shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(
                ["nvidia-smi", f"--id={self._gpu_id()}", "--query-gpu=utilization.gpu",
                 "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        self.samples = [float(v) for v in out.split() if v.strip().replace(".", "", 1).isdigit()]

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {}
        return {f"gpu_util_{self.name}_mean_pct": round(statistics.fmean(self.samples), 1),
                f"gpu_util_{self.name}_max_pct": max(self.samples),
                f"gpu_util_{self.name}_samples": len(self.samples)}


def peak_gpu_mib(device: torch.device) -> float | None:
    """Peak GPU memory torch allocated since the last reset, in MiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def emit(payload: dict, *, jsonl: bool) -> None:
    """Print the result: one JSON line with ``--jsonl``, indented JSON otherwise."""
    print(json.dumps(payload) if jsonl else json.dumps(payload, indent=2), flush=True)


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


def machine_info(device: torch.device, precision: str, *, compiled: bool = False, tf32: bool = False) -> dict:
    """Where and at which shapes a throughput figure was measured (the head of every bench JSON here)."""
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "precision": precision,
        "compile": compiled,
        "tf32": tf32,
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
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (as train.compile)")
    parser.add_argument("--tf32", action="store_true", help="TF32 matmuls on CUDA (as train.tf32)")
    parser.add_argument("--epochs", type=int, default=1, help="timed training epochs")
    parser.add_argument("--jsonl", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    config = load_config(args.config, args.set)
    config = with_overrides(config, {
        "data.dataset": "synthetic", "data.path": None,
        "data.synthetic_train": 1284, "data.synthetic_valid": 229, "data.synthetic_test": 686,
        "train.device": args.device, "train.precision": args.precision, "optim.batch_size": 64,
        "train.compile": args.compile, "train.tf32": args.tf32,
    })
    device = torch.device(args.device)
    with run_settings(device, tf32=args.tf32, deterministic=False):
        result = measure(config, device, args)
    emit({**machine_info(device, args.precision, compiled=args.compile, tf32=args.tf32), **result}, jsonl=args.jsonl)


def measure(config, device: torch.device, args: argparse.Namespace) -> dict:
    dataset = load_dataset(config.data)
    gen = make_generator(config.train.seed)
    with isolated_rng(draw_seed(gen), device):
        model = build_model(config).to(device)
    ctx = EpochContext.create(config, dataset, model, device, gen)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, **fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    flops = step_flops(ctx)  # counted eagerly; also warms up the allocator and kernels
    compiled = None
    if args.compile:
        compiled = compile_model(model)
        warm_up(ctx, compiled)  # compiles the training step's forward and backward
    _sync(device)
    reset_peak(device)
    with GpuMonitor(device, "train") as train_util:
        start = time.perf_counter()
        for epoch in range(args.epochs):
            train_epoch(ctx, optimizer, scheduler, epoch=epoch + 1, max_rate=0.5)
        _sync(device)
        epoch_s = (time.perf_counter() - start) / args.epochs
    train_peak = peak_gpu_mib(device)
    steps = len(dataset.train) // config.optim.batch_size
    trained = steps * config.optim.batch_size

    test = dataset.test
    masks = [eval_keep(test.valid, rate=r, seed=1111, split="test") for r in EVAL_RATES]
    common = {"batch_size": config.train.eval_batch_size, "device": device, "precision": args.precision}
    predict_many(model, test, keeps=masks, **common)  # warm-up (and, compiled, the eval graph)
    _sync(device)
    reset_peak(device)
    with GpuMonitor(device, "eval") as eval_util:
        start = time.perf_counter()
        predict_many(model, test, keeps=masks, **common)  # the validation path: every rate per batch
        _sync(device)
        eval_s = time.perf_counter() - start
    eval_peak = peak_gpu_mib(device)

    peak = matmul_flops(device)
    achieved = flops * steps / epoch_s
    gpu = {}
    if device.type == "cuda":
        gpu = {"gpu_peak_mib_train": train_peak, "gpu_peak_mib_eval": eval_peak,
               **train_util.summary(), **eval_util.summary()}
    return {
        "model": {k: getattr(config.model, k) for k in ("hidden", "heads", "encoder_layers", "downsample")},
        "parameters": sum(p.numel() for p in model.parameters()),
        "compiled": compiled is not None and compiled.active,
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
        **gpu,
        "targets": {"train_flop_share_of_matmul": ">= 0.25", "eval_ten_rates_in_train_epochs": "<= 2"},
    }


if __name__ == "__main__":
    from fsrf import FSRFError

    try:
        main()
    except FSRFError as err:
        raise SystemExit(f"bench/train_throughput.py: error: {err}") from None
