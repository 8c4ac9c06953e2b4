"""What BERT tokens cost against precomputed text features: FSRF training and evaluation
samples/s at CMU-MOSI unaligned shapes, batch 64, with ``data.text_input: features`` and with
``tokens`` through a frozen (and a fine-tuned) BERT-tiny-shaped encoder; prints JSON.

    python bench/text_tokens.py                 # CPU
    python bench/text_tokens.py --device cuda --steps 20

Each mode is measured by bench/models.py's `measure` (the same step, warm-up and complete-input
evaluation). The encoder is random (``BertConfig`` of BERT-tiny's shape: 2 layers, width 128, 2 heads,
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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from models import measure
from train_throughput import machine_info

from fsrf import load_config, with_overrides
from fsrf._rng import isolated_rng
from fsrf._run_data import load_dataset

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per mode")
    args = parser.parse_args()
    args.compile = False  # what bench/models.py's measure reads besides precision and steps
    device = torch.device(args.device)
    base = load_config(ROOT / "configs" / "mosi.yaml")
    sizes = {"data.dataset": "synthetic", "data.path": None, "data.synthetic_train": 64 * (args.steps + 2),
             "data.synthetic_valid": 64, "data.synthetic_test": 256}

    def fsrf_row(overrides: dict) -> dict:
        dataset = load_dataset(with_overrides(base, {**sizes, **overrides}).data)
        row = measure("fsrf", args, dataset, device, overrides=overrides)
        row["train_step_s"] = round(64 / row["train_samples_per_s"], 4)
        return row

    with tempfile.TemporaryDirectory(prefix="fsrf-bench-bert-") as tmp:
        bert = str(save_tiny_bert(Path(tmp)))
        tokens = {"data.text_input": "tokens", "data.text_model": bert, "data.text_dim": BERT_TINY["hidden_size"]}
        modes = {
            "features": fsrf_row({}),
            "tokens_frozen": fsrf_row(tokens),
            "tokens_finetuned": fsrf_row({**tokens, "data.text_finetune": True}),
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
