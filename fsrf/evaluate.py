"""Evaluation across missing rates and whole-modality patterns: the field's robustness tables.

Random missingness: every modality loses frames/tokens at one fixed rate r in
0.0 ... 0.9 (the first and last text token kept); the masks are a pure function
of (seed, rate, split). With ``data.text_input: tokens`` the dropped text tokens
become [UNK] before BERT runs (the LNLN/MMSA protocol, ``text_protocol: tokens``);
with ``features`` rows of precomputed BERT features are zeroed instead, an
approximation (``text_protocol: features-approx``). Whole-modality missingness
(CorrKD/HRLF protocol): the six availability patterns {l}, {a}, {v}, {l,a},
{l,v}, {a,v} plus the complete input.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fsrf._constants import COMPLETE_PATTERN, EVAL_RATES, MISSING_PATTERNS, TEXT_PROTOCOLS, pattern_name
from fsrf._device import autocast, to_device
from fsrf._yaml import atomic_write_text
from fsrf.data import Split
from fsrf.metrics import regression_metrics
from fsrf.missing import apply_keep, eval_keep, pattern_keep
from fsrf.model import BaseModel, side_inputs

AVERAGE = "Average"


@torch.no_grad()
def predict(
    model: BaseModel,
    split: Split,
    *,
    keep: Mapping[str, torch.Tensor] | None,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """Predictions (N,) float32 on the CPU for a whole split under fixed keep masks.

    Args:
        keep: modality -> (N, T_m) bool keep masks for the whole split (on the CPU or on
            ``device``), or None (complete).
    """
    return predict_many(model, split, keeps=[keep], batch_size=batch_size, device=device, precision=precision)[0]


@torch.no_grad()
def predict_many(
    model: BaseModel,
    split: Split,
    *,
    keeps: Sequence[Mapping[str, torch.Tensor] | None],
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """Predictions of a whole split under each of several fixed keep masks (e.g. every missing rate).

    Each batch goes to ``device`` once (pinned, without waiting, on CUDA) and runs under
    every mask there; the predictions stay on the device and are read back once at the end.
    Each forward is the one :func:`predict` would run (same batches, same inputs), so the
    results equal one :func:`predict` per mask.

    Args:
        keeps: per condition, modality -> (N, T_m) bool keep masks for the whole split (on the
            CPU or on ``device``; masks already on ``device`` are sliced there), or None (complete).

    Returns:
        One (N,) float32 CPU tensor per entry of ``keeps``.
    """
    was_training = model.training
    model.eval()
    preds: list[list[torch.Tensor]] = [[] for _ in keeps]
    for index, batch in split.batches(batch_size):
        features = {m: to_device(f, device) for m, f in batch.features.items()}
        valid = {m: to_device(v, device) for m, v in batch.valid.items()}
        on_device = to_device(index, device)  # slices masks kept on the device, without a blocking copy
        side = side_inputs(model, {k: to_device(x, device) for k, x in batch.extras.items()})
        for out, keep in zip(preds, keeps):
            x, kept = features, None
            if keep is not None:
                kept = {m: to_device(k.index_select(0, index if k.device.type == "cpu" else on_device), device)
                        for m, k in keep.items()}
                x = apply_keep(features, kept)
            with autocast(device, precision):
                out.append(model(x, valid, keep=kept, **side).pred.float())
    model.train(was_training)
    return [torch.cat(out).cpu() for out in preds]


@dataclass(frozen=True)
class RobustnessTable:
    """Rows of metrics, one per condition, plus an ``Average`` row.

    Attributes:
        title: what the rows vary (``missing rate`` or ``available modalities``).
        rows: condition label -> metric name -> value; the last row is the average.
        text_protocol: ``features-approx`` or ``tokens`` (:func:`model_text_protocol`), written to
            the JSON file when given.
    """

    title: str
    rows: dict[str, dict[str, float]]
    text_protocol: str | None = None

    def metric_names(self) -> list[str]:
        return list(next(iter(self.rows.values())))

    def to_text(self, *, digits: int = 4) -> str:
        """An aligned plain-text table for the terminal."""
        names = self.metric_names()
        header = [self.title, *names]
        body = [[label, *(_fmt(row[n], digits) for n in names)] for label, row in self.rows.items()]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *body]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.text_protocol is not None:
            lines.append(protocol_line(self.text_protocol))
        return "\n".join(lines)

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        protocol = [] if self.text_protocol is None else [self.text_protocol]
        writer.writerow([self.title, *self.metric_names(), *(["text_protocol"] if protocol else [])])
        for label, row in self.rows.items():
            writer.writerow([label, *(repr(float(v)) for v in row.values()), *protocol])
        return buf.getvalue()

    def to_json(self) -> str:
        rows = {k: {m: (None if math.isnan(v) else v) for m, v in r.items()} for k, r in self.rows.items()}
        protocol = {} if self.text_protocol is None else {"text_protocol": self.text_protocol}
        return json.dumps({"title": self.title, **protocol, "rows": rows}, indent=2)

    def write(self, directory: str | Path, stem: str) -> list[Path]:
        """Write ``<stem>.json`` and ``<stem>.csv`` atomically into ``directory``."""
        directory = Path(directory)
        paths = [directory / f"{stem}.json", directory / f"{stem}.csv"]
        atomic_write_text(paths[0], self.to_json())
        atomic_write_text(paths[1], self.to_csv())
        return paths


def protocol_line(protocol: str) -> str:
    """The line under every results table that says how missing text was simulated."""
    if protocol == "mixed":
        return "text protocol: mixed (some runs dropped precomputed feature rows, some token ids)"
    if protocol == TEXT_PROTOCOLS["features"]:
        return ("text protocol: features-approx (rows of precomputed BERT features dropped; the kept rows still "
                "encode the dropped words, so text robustness is overstated: data.text_input: tokens runs the "
                "MMSA/LNLN token protocol)")
    return "text protocol: tokens (dropped token ids -> [UNK] before BERT, as MMSA/LNLN)"


def _fmt(value: float, digits: int) -> str:
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"


def model_text_protocol(model: BaseModel) -> str:
    """``tokens`` when ``model`` encodes text token ids itself, else ``features-approx``."""
    return TEXT_PROTOCOLS["tokens" if getattr(model, "text_encoder", None) is not None else "features"]


def mean_row(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Metric-wise mean of rows (NaN when any row is NaN)."""
    names = list(rows[0])
    return {n: float(sum(r[n] for r in rows) / len(rows)) for n in names}


def random_missing_table(
    model: BaseModel,
    split: Split,
    *,
    dataset: str,
    split_name: str,
    seed: int,
    rates: Sequence[float] = EVAL_RATES,
    batch_size: int = 256,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> RobustnessTable:
    """One row per missing rate (same rate for every sample and modality), plus their average."""
    device = device or torch.device("cpu")
    keeps = [eval_keep(split.valid, rate=rate, seed=seed, split=split_name) for rate in rates]
    preds = predict_many(model, split, keeps=keeps, batch_size=batch_size, device=device, precision=precision)
    rows: dict[str, dict[str, float]] = {
        f"{rate:.1f}": regression_metrics(pred, split.labels, dataset) for rate, pred in zip(rates, preds)
    }
    rows[AVERAGE] = mean_row(list(rows.values()))
    return RobustnessTable("missing rate", rows, model_text_protocol(model))


def modality_pattern_table(
    model: BaseModel,
    split: Split,
    *,
    dataset: str,
    batch_size: int = 256,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> RobustnessTable:
    """One row per availability pattern ({l}, ..., {a,v}), the complete input, and the
    average over the six missing patterns (the field's ``Avg`` column)."""
    device = device or torch.device("cpu")
    patterns = (*MISSING_PATTERNS, COMPLETE_PATTERN)
    keeps = [pattern_keep(split.valid, present) for present in patterns]
    preds = predict_many(model, split, keeps=keeps, batch_size=batch_size, device=device, precision=precision)
    rows: dict[str, dict[str, float]] = {
        "{" + ",".join(pattern_name(present)) + "}": regression_metrics(pred, split.labels, dataset)
        for present, pred in zip(patterns, preds)
    }
    complete = rows.pop("{" + ",".join(pattern_name(COMPLETE_PATTERN)) + "}")
    average = mean_row(list(rows.values()))
    rows["complete"] = complete
    rows[AVERAGE] = average
    return RobustnessTable("available modalities", rows, model_text_protocol(model))


def domain_table(
    random_table: RobustnessTable,
    pattern_table: RobustnessTable,
    *,
    target: str,
    sources: Sequence[str],
) -> RobustnessTable:
    """The domain-generalisation table: the target domain's rows under both missing protocols.

    Rows: ``<target> complete`` (nothing missing), ``<target> random avg`` (the random table's
    average over its rates) and ``<target> modality avg`` (the average over the six availability
    patterns); the title names the source domains the model was trained on.
    """
    rows = {
        f"{target} complete": pattern_table.rows["complete"],
        f"{target} random avg": random_table.rows[AVERAGE],
        f"{target} modality avg": pattern_table.rows[AVERAGE],
    }
    return RobustnessTable(f"target (sources {'+'.join(sources)})", rows, random_table.text_protocol)
