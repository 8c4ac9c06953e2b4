"""What BERT tokens cost against precomputed text features: FSRF training and evaluation
samples/s at CMU-MOSI unaligned shapes, batch 64, with ``data.text_input: features`` and with
``tokens`` through a frozen (and a fine-tuned) BERT-tiny-shaped encoder; prints JSON.

    python bench/text_tokens.py                 # CPU
    python bench/text_tokens.py --device cuda --steps 20

The encoder is random (``BertConfig`` of BERT-tiny's shape: 2 layers, width 128, 2 heads,
vocabulary 30,522, saved with ``save_pretrained`` to a temporary directory with a generated
``vocab.txt``: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102): speed does not depend on its weights.
Features mode reads 768-wide text features, as MMSA's pickles hold them; tokens mode hands the
model the encoder's 128-wide states, so the models differ only in their text input.
Target (issue): frozen tokens mode costs <= 2x the features mode's training step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from train_throughput import _sync, machine_info  # noqa: E402
from fsrf import build_model, load_config, with_overrides  # noqa: E402
from fsrf._rng import draw_seed, isolated_rng, make_generator  # noqa: E402
from fsrf._run_data import load_dataset  # noqa: E402
from fsrf._steps import EpochContext, step_loss  # noqa: E402
from fsrf.evaluate import predict  # noqa: E402
from fsrf.missing import eval_keep  # noqa: E402

BERT_TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512,
             "vocab_size": 30522, "max_position_embeddings": 512}


def save_tiny_bert(directory: Path) -> Path:
    """A random BERT of BERT-tiny's shape and a vocabulary with BERT's special ids."""
    from transformers import BertConfig, BertModel

    with isolated_rng(0):
        BertModel(BertConfig(**BERT_TINY)).save_pretrained(directory)
    words = [f"w{i}" for i in range(BERT_TINY["vocab_size"])]
    for index, token in ((0, "[PAD]"), (100, "[UNK]"), (101, "[CLS]"), (102, "[SEP]"), (103, "[MASK]")):
        words[index] = token
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return directory


def measure(overrides: dict, args: argparse.Namespace, device: torch.device) -> dict:
    config = with_overrides(load_config(ROOT / "configs" / "mosi.yaml"), {
        "data.dataset": "synthetic", "data.path": None, "train.device": str(device),
        "train.precision": args.precision, "optim.batch_size": 64,
        "data.synthetic_train": 64 * (args.steps + 2), "data.synthetic_valid": 64, "data.synthetic_test": 256,
        **overrides,
    })
    dataset = load_dataset(config.data)
    gen = make_generator(config.train.seed)
    with isolated_rng(draw_seed(gen), device):
        model = build_model(config).to(device)
    ctx = EpochContext.create(config, dataset, model, device, gen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = dataset.train.batches(64, generator=gen, drop_last=True)
    model.train()

    def step() -> None:
        _, batch = next(batches)
        total, _ = step_loss(ctx, batch, max_rate=0.5)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    train_s = (time.perf_counter() - start) / args.steps
    test = dataset.test
    keep = eval_keep(test.valid, rate=0.5, seed=1111, split="test")
    predict(model, test, keep=keep, batch_size=256, device=device, precision=args.precision)
    _sync(device)
    start = time.perf_counter()
    predict(model, test, keep=keep, batch_size=256, device=device, precision=args.precision)
    _sync(device)
    return {
        "train_samples_per_s": round(64 / train_s, 1),
        "train_step_s": round(train_s, 4),
        "eval_samples_per_s": round(len(test) / (time.perf_counter() - start), 1),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per mode")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="fsrf-bench-bert-") as tmp:
        bert = str(save_tiny_bert(Path(tmp)))
        tokens = {"data.text_input": "tokens", "data.text_model": bert, "data.text_dim": BERT_TINY["hidden_size"]}
        modes = {
            "features": measure({}, args, device),
            "tokens_frozen": measure(tokens, args, device),
            "tokens_finetuned": measure({**tokens, "data.text_finetune": True}, args, device),
        }
    base = modes["features"]["train_step_s"]
    for row in modes.values():
        row["train_step_cost_vs_features"] = round(row["train_step_s"] / base, 2)
    print(json.dumps({
        **machine_info(device, args.precision),
        "shapes": {"text": [50, 768], "audio": [375, 5], "vision": [500, 20], "batch": 64, "encoder": BERT_TINY},
        "model": "fsrf (configs/mosi.yaml)",
        "modes": modes,
        "targets": {"tokens_frozen train_step_cost_vs_features": "<= 2"},
    }, indent=2))


if __name__ == "__main__":
    main()
