"""Predictions of a trained model on new data, under any missingness, with the samples' ids.

    >>> loaded = load_model("runs/mosi/best.pt")                       # doctest: +SKIP
    >>> rows = loaded.predict(dataset.test, missing_rate=0.3)           # doctest: +SKIP

The missing input is the evaluation protocols' (:mod:`fsrf.missing`): a random missing rate
with fixed masks that are a pure function of (seed, rate, split), or a whole-modality pattern
naming the modalities that are present. ``fsrf predict`` writes the rows as CSV.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fsrf._checkpoint import checkpoint_config, load_checkpoint, load_weights
from fsrf._config import Config
from fsrf._constants import MODALITIES
from fsrf._device import eval_precision, resolve_device
from fsrf._errors import FSRFError
from fsrf.data import Split
from fsrf.evaluate import predict
from fsrf.missing import eval_keep, pattern_keep
from fsrf.model import BaseModel, build_model


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A checkpoint's model, in eval mode on its device, with the config it was trained with.

    Attributes:
        model: the network, weights loaded.
        config: the run config stored in the checkpoint.
        device: where the model runs.
        epoch: the checkpoint's epoch.
    """

    model: BaseModel
    config: Config
    device: torch.device
    epoch: int

    def predict(
        self,
        split: Split,
        *,
        missing_rate: float | None = None,
        modalities: Sequence[str] | None = None,
        seed: int | None = None,
        split_name: str = "test",
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """(N,) float32 predictions for every sample of ``split``.

        Args:
            missing_rate: drop this share of each modality's valid frames (fixed masks of
                (``seed``, rate, ``split_name``), the random-missing protocol).
            modalities: the present modalities (the whole-modality protocol), e.g. ``("text",)``.
            seed: the masks' seed (default: the config's ``missing.eval_seed``).
            split_name: the split the masks are drawn for (masks differ between splits).
            batch_size: default the config's ``train.eval_batch_size``.

        Raises:
            FSRFError: both ``missing_rate`` and ``modalities``, a rate outside [0, 1), an unknown modality.
        """
        keep = missing_keep(split, missing_rate=missing_rate, modalities=modalities,
                            seed=self.config.missing.eval_seed if seed is None else seed, split_name=split_name)
        return predict(self.model, split, keep=keep, batch_size=batch_size or self.config.train.eval_batch_size,
                       device=self.device, precision=eval_precision(self.device, self.config.train.precision))


def missing_keep(split: Split, *, missing_rate: float | None, modalities: Sequence[str] | None, seed: int,
                 split_name: str) -> dict[str, torch.Tensor] | None:
    """The keep masks of one condition for a whole split (None: complete input)."""
    if missing_rate is not None and modalities is not None:
        raise FSRFError("--missing-rate and --modalities: give one condition, not both")
    if missing_rate is not None:
        if not 0.0 <= missing_rate < 1.0:
            raise FSRFError(f"--missing-rate: {missing_rate} must be in [0, 1)")
        return eval_keep(split.valid, rate=missing_rate, seed=seed, split=split_name)
    if modalities is not None:
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise FSRFError(f"--modalities: {','.join(modalities) or '(none)'} must name one or more of "
                            f"{', '.join(MODALITIES)}")
        return pattern_keep(split.valid, tuple(modalities))
    return None


def load_model(checkpoint: str | os.PathLike[str], *, device: str = "auto") -> LoadedModel:
    """The model of a ``best.pt``/``last.pt`` ready to predict (weights-only loading).

    A frozen BERT text encoder (``data.text_input: tokens``) is read again from the config's
    local ``data.text_model`` directory.

    Raises:
        FSRFError: the file is not an fsrf checkpoint, or its weights do not fit its config.
    """
    state = load_checkpoint(checkpoint)
    config = checkpoint_config(state, source=str(checkpoint))
    dev = resolve_device(device)
    model = build_model(config)
    load_weights(model, state, source=str(checkpoint))
    model.to(dev).eval()
    return LoadedModel(model=model, config=config, device=dev, epoch=int(state["epoch"]))


def predictions_csv(rows: Sequence[tuple[str, str, float, float]], condition: str) -> str:
    """``split,id,label,prediction,condition`` rows as CSV text (floats written exactly)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["split", "id", "label", "prediction", "condition"])
    for split, sample, label, pred in rows:
        writer.writerow([split, sample, repr(float(label)), repr(float(pred)), condition])
    return buf.getvalue()


def condition_name(missing_rate: float | None, modalities: Sequence[str] | None) -> str:
    """How a prediction's input was missing, as the CSV's ``condition`` column says it."""
    if missing_rate is not None:
        return f"random rate {missing_rate:g}"
    if modalities is not None:
        return "present " + "+".join(modalities)
    return "complete"


def default_out(checkpoint: str | os.PathLike[str], split: str) -> Path:
    return Path(checkpoint).parent / f"predictions-{split}.csv"


__all__ = ["LoadedModel", "load_model"]
