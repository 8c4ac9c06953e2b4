"""Missing-modality simulation: which frames/tokens of each modality an incomplete view keeps.

Two protocols of the field, with shared conventions (keep masks True = kept,
padding always kept, dropped frames zero-filled by :func:`apply_keep`, every
draw from an explicit :class:`torch.Generator`, on the CPU or on the masks' device):

* intra-modality (LNLN): :class:`RandomDrop` drops single tokens/frames;
  :func:`eval_keep` / :class:`EvalMaskCache` give the fixed evaluation masks
  at one rate, a pure function of (seed, rate, split);
* inter-modality (CorrKD/HRLF): :class:`ModalityDrop` drops whole modalities in
  training; :func:`pattern_keep` builds the six evaluation patterns;
* :class:`MixedDrop` mixes both per sample ("uncertain missingness").
"""

from __future__ import annotations

from fsrf.missing._base import BaseMissingness
from fsrf.missing._eval import EvalMaskCache, eval_generator_seed, eval_keep
from fsrf.missing._masks import apply_keep, pattern_keep, training_rates
from fsrf.missing._mixed import MixedDrop
from fsrf.missing._modality_drop import ModalityDrop
from fsrf.missing._random_drop import RandomDrop
from fsrf.missing._registry import SIMULATORS, build_simulator

__all__ = [
    "SIMULATORS",
    "BaseMissingness",
    "EvalMaskCache",
    "MixedDrop",
    "ModalityDrop",
    "RandomDrop",
    "apply_keep",
    "build_simulator",
    "eval_generator_seed",
    "eval_keep",
    "pattern_keep",
    "training_rates",
]
