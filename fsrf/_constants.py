"""Names shared by the trainer, TensorBoard, the tuner's store and the analysis.

Every metric string in the project is built here, so that the same key means the
same thing everywhere. Keys are split-prefixed paths:

* ``valid/r0.3/MAE``: a metric on a split at one random-missing rate;
* ``valid/robust/MAE``: the mean of that metric over the configured rates;
* ``test/pattern/la/MAE``: a metric under a whole-modality pattern (``la`` = text
  and audio present);
* ``train/loss/task``: a training loss term, averaged over the epoch.

Modalities are always ordered text, audio, vision (``l``, ``a``, ``v``).
"""

from __future__ import annotations

from typing import Final

MODALITIES: Final[tuple[str, str, str]] = ("text", "audio", "vision")
"""The one modality order used in configs, tensors, masks and tables."""

MODALITY_CODES: Final[dict[str, str]] = {"text": "l", "audio": "a", "vision": "v"}
"""One-letter codes of the field (``l`` for language)."""

EVAL_RATES: Final[tuple[float, ...]] = tuple(round(0.1 * i, 1) for i in range(10))
"""The field's test missing rates: 0.0, 0.1, ..., 0.9."""

MISSING_PATTERNS: Final[tuple[tuple[str, ...], ...]] = (
    ("text",),
    ("audio",),
    ("vision",),
    ("text", "audio"),
    ("text", "vision"),
    ("audio", "vision"),
)
"""The six whole-modality availability patterns (present modalities), CorrKD order."""

COMPLETE_PATTERN: Final[tuple[str, ...]] = MODALITIES

TEXT_INPUTS: Final[tuple[str, str]] = ("features", "tokens")
"""``data.text_input``: MMSA's precomputed BERT features, or its token ids through a BERT encoder."""

TEXT_PROTOCOLS: Final[dict[str, str]] = {"features": "features-approx", "tokens": "tokens"}
"""The text protocol each text input gives, as results files name it: dropping rows of
precomputed contextual features approximates the field's token protocol (the kept rows still
encode the dropped words); ``tokens`` is MMSA's/LNLN's (dropped ids -> [UNK] before BERT)."""

# --- metric names (MMSA keys) ---------------------------------------------------
MOSI_METRICS: Final[tuple[str, ...]] = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
)
SIMS_METRICS: Final[tuple[str, ...]] = (
    "Mult_acc_2",
    "Mult_acc_3",
    "Mult_acc_5",
    "F1_score",
    "MAE",
    "Corr",
)
DATASET_METRICS: Final[dict[str, tuple[str, ...]]] = {
    "mosi": MOSI_METRICS,
    "mosei": MOSI_METRICS,
    "synthetic": MOSI_METRICS,
    "sims": SIMS_METRICS,
}

LABEL_BOUNDS: Final[dict[str, float]] = {"mosi": 3.0, "mosei": 3.0, "synthetic": 3.0, "sims": 1.0}
"""Each dataset's sentiment labels lie in [-b, b]: MOSI/MOSEI (and the synthetic data) on [-3, 3],
SIMS on [-1, 1]."""

LOWER_IS_BETTER: Final[frozenset[str]] = frozenset({"MAE"})
"""Metrics to minimise; every other MMSA metric is maximised."""


def direction(metric: str) -> str:
    """Return ``"min"`` or ``"max"`` for an MMSA metric name or a full metric key.

    Raises:
        ValueError: for ``objective``/``objective_complete``, whose direction is that of the
            run's ``train.select_metric`` (or the search space's objective), not a fixed one.
    """
    name = metric.rsplit("/", 1)[-1]
    if name in ("objective", "objective_complete"):
        raise ValueError(f"the direction of {name!r} is that of the selection metric it stands for")
    return "min" if name in LOWER_IS_BETTER or name.startswith("loss") else "max"


# --- key builders ---------------------------------------------------------------
TRAIN: Final = "train"
VALID: Final = "valid"
TEST: Final = "test"
SPLITS: Final[tuple[str, str, str]] = (TRAIN, VALID, TEST)

OBJECTIVE: Final = "objective"
"""The fixed name under which every epoch's report carries the selection objective."""

COMPLETE_OBJECTIVE: Final = "objective_complete"
"""The selection metric on complete validation inputs (rate 0.0), beside the robust objective."""

BEST_OBJECTIVE: Final = "best_objective"
"""The objective of the run's best selectable epoch so far (NaN before one): a run's value, the
one every leaderboard, table and TensorBoard's HParams rank by (the checkpoint it names is best.pt)."""

EPOCH: Final = "epoch"
FINAL_EPOCH: Final = "final_epoch"
"""1.0 in the report of a run's last epoch (its epoch budget or early stopping), else 0.0."""
TRAIN_RATE: Final = "train/missing_rate"
LEARNING_RATE: Final = "train/lr"
RETUNED_PREFIX: Final = f"{TRAIN}/retuned/"
"""Prefix of the per-epoch values of config fields a resumed run may change (``train(retune=...)``)."""


def retuned_key(path: str) -> str:
    """``train/retuned/optim.lr``: the value a retunable config field had in that epoch."""
    return f"{RETUNED_PREFIX}{path}"


def rate_key(split: str, rate: float, metric: str) -> str:
    """``valid/r0.3/MAE``."""
    return f"{split}/r{rate:.1f}/{metric}"


def robust_key(split: str, metric: str) -> str:
    """``valid/robust/MAE``: the mean over the evaluated missing rates."""
    return f"{split}/robust/{metric}"


def pattern_name(present: tuple[str, ...]) -> str:
    """``("text", "audio")`` -> ``"la"``."""
    return "".join(MODALITY_CODES[m] for m in MODALITIES if m in present)


def pattern_key(split: str, present: tuple[str, ...], metric: str) -> str:
    """``test/pattern/la/MAE``."""
    return f"{split}/pattern/{pattern_name(present)}/{metric}"


LOSS_TERMS_PREFIX: Final = f"{TRAIN}/loss/"


def loss_key(term: str) -> str:
    """``train/loss/task``."""
    return f"{LOSS_TERMS_PREFIX}{term}"


# --- file names -------------------------------------------------------------------
CONFIG_FILE: Final = "config.yaml"
BEST_CHECKPOINT: Final = "best.pt"
LAST_CHECKPOINT: Final = "last.pt"
HISTORY_FILE: Final = "history.jsonl"
TENSORBOARD_DIR: Final = "tensorboard"
RANDOM_TABLE: Final = "robustness_random"
PATTERN_TABLE: Final = "robustness_patterns"
DOMAIN_TABLE: Final = "robustness_domain"
