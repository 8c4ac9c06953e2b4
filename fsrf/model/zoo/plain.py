"""``plain``: FSRF's encoders and fusion with no auxiliary term, the ablation baseline.

The network is FSRF's without the recovery path and availability embedding: each modality's
sequence encoder, its homogeneous / heterogeneous projections (untrained by any constraint)
and the fusion Transformer over the six tokens, trained on the task loss alone. It is the
model that FSRF with every auxiliary weight 0 and ``model.recovery: false`` trains, weight
for weight (same parameters, same initialisation); ``configs/plain-mixed.yaml`` trains it
with the mixed missingness simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fsrf.model._base import register_model
from fsrf.model.zoo.fsrf import FSRF, REAL_DATA_ARCHITECTURE, EncoderFusionConfig


@dataclass(frozen=True)
class PlainConfig(EncoderFusionConfig):
    """The plain model's section: FSRF's architecture fields only (it has no loss term of its own)."""

    name: str = "plain"

    dataset_defaults: ClassVar = {ds: REAL_DATA_ARCHITECTURE for ds in ("mosi", "mosei", "sims")}  # as FSRF's


@register_model
class Plain(FSRF):
    """Per-modality encoders + fusion, task loss only (see the module docstring)."""

    name = "plain"
    config_class = PlainConfig
    paper = "ablation baseline (FSRF's network without its auxiliary terms or recovery path)"
    faithful = "FSRF's encoders, projections and fusion, trained on the task loss alone"
    deviations = "none: a baseline of this project, not a published system"

    def training_views(self) -> int:
        return 1

    def training_step(self, batch):
        return super(FSRF, self).training_step(batch)
