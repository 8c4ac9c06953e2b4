"""Frozen configuration dataclasses, the single source of truth for a run.

A YAML file is their serialised form: one mapping per section (``data``,
``model``, ``loss``, ``curriculum``, ``missing``, ``optim``, ``train``). Dotted
paths (``loss.homo``, ``curriculum.kind``) name a field everywhere: in
``--set`` overrides, in search spaces and in the trial store's columns.
Nothing mutates a config after construction; overrides build a new one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fsrf._constants import EVAL_RATES, MODALITIES
from fsrf._errors import FSRFError
from fsrf.curriculum import CURRICULA, BaseCurriculum, build_curriculum

DATASETS = ("synthetic", "mosi", "mosei", "sims")
CURRICULUM_KINDS = ("constant", "linear", "step", "cosine", "exponential", "adaptive")
SIMULATOR_NAMES = ("random", "modality", "mixed")
SYNTHETIC_KINDS = ("basic", "recovery")
SYNTHETIC_LABELS = ("shared", "specific")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise FSRFError(f"{key}: {message}")


def _unit(value: float, key: str) -> None:
    _check(0.0 <= value <= 1.0, key, f"{value!r} is out of range, expected a value in [0, 1]")


def _one_of(value: str, key: str, allowed: Sequence[str]) -> None:
    _check(value in allowed, key, f"{value!r} is not one of {', '.join(allowed)}")


@dataclass(frozen=True)
class DataConfig:
    """Which data, and the shapes the model is built for."""

    dataset: str = "synthetic"
    path: str | None = None
    text_dim: int = 32
    audio_dim: int = 12
    vision_dim: int = 16
    text_len: int = 24
    audio_len: int = 40
    vision_len: int = 40
    synthetic_seed: int = 0
    synthetic_train: int = 600
    synthetic_valid: int = 150
    synthetic_test: int = 150
    synthetic_kind: str = "basic"
    synthetic_label: str = "shared"
    synthetic_label_noise: float = 0.6
    synthetic_latent: int = 4

    def __post_init__(self) -> None:
        _one_of(self.dataset, "dataset", DATASETS)
        _one_of(self.synthetic_kind, "synthetic_kind", SYNTHETIC_KINDS)
        _one_of(self.synthetic_label, "synthetic_label", SYNTHETIC_LABELS)
        _check(self.synthetic_label_noise >= 0, "synthetic_label_noise",
               f"{self.synthetic_label_noise} must be >= 0")
        _check(self.synthetic_latent >= 1, "synthetic_latent", f"{self.synthetic_latent} must be >= 1")
        for m in MODALITIES:
            for kind in ("dim", "len"):
                key = f"{m}_{kind}"
                _check(getattr(self, key) >= 1, key, f"{getattr(self, key)} must be >= 1")
        for key in ("synthetic_train", "synthetic_valid", "synthetic_test"):
            _check(getattr(self, key) >= 2, key, f"{getattr(self, key)} must be >= 2")

    def dims(self) -> dict[str, int]:
        """Feature dimension per modality, in modality order."""
        return {m: getattr(self, f"{m}_dim") for m in MODALITIES}

    def lengths(self) -> dict[str, int]:
        """Padded sequence length per modality, in modality order."""
        return {m: getattr(self, f"{m}_len") for m in MODALITIES}


@dataclass(frozen=True)
class ModelConfig:
    """Encoders, factorization and fusion sizes."""

    hidden: int = 64
    heads: int = 4
    encoder_layers: int = 1
    fusion_layers: int = 1
    ff_mult: int = 2
    dropout: float = 0.1
    downsample: int = 1
    recovery: bool = True
    absent_at: float = 0.0
    noise_dim: int = 8

    def __post_init__(self) -> None:
        _check(self.hidden >= 1, "hidden", f"{self.hidden} must be >= 1")
        _unit(self.absent_at, "absent_at")
        _check(self.noise_dim >= 1, "noise_dim", f"{self.noise_dim} must be >= 1")
        _check(self.heads >= 1, "heads", f"{self.heads} must be >= 1")
        _check(
            self.hidden % self.heads == 0,
            "heads",
            f"{self.heads} must divide model.hidden={self.hidden}",
        )
        for key in ("encoder_layers", "fusion_layers", "ff_mult", "downsample"):
            _check(getattr(self, key) >= 1, key, f"{getattr(self, key)} must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} must be in [0, 1)")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights; a weight of 0 skips that term's computation."""

    task: str = "l1"
    homo: float = 0.8
    diff: float = 0.3
    recon: float = 1.0
    noise: float = 1.0
    recover: float = 1.0
    distill: float = 1.0
    align: float = 0.5
    align_kind: str = "mmd"
    cmd_order: int = 5
    teacher: str = "views"
    distill_margin: float = 0.25

    def __post_init__(self) -> None:
        _one_of(self.task, "task", ("l1", "mse"))
        _unit(self.distill_margin, "distill_margin")
        _one_of(self.align_kind, "align_kind", ("cmd", "mmd"))
        _one_of(self.teacher, "teacher", ("views", "complete", "both"))
        _check(self.cmd_order >= 1, "cmd_order", f"{self.cmd_order} must be >= 1")
        for key in self.weight_names():
            value = getattr(self, key)
            _check(value >= 0.0, key, f"{value} is negative, expected a weight >= 0")

    @staticmethod
    def weight_names() -> tuple[str, ...]:
        """The auxiliary terms' weight fields (the task term has weight 1)."""
        return ("homo", "diff", "recon", "noise", "recover", "distill", "align")


@dataclass(frozen=True)
class CurriculumConfig:
    """The training missing rate (maximum per-sample rate) as a function of the epoch."""

    kind: str = "linear"
    start: float = 0.0
    end: float = 0.7
    warmup_epochs: int = 0
    ramp_epochs: int = 10
    step_epochs: int = 3
    step_size: float = 0.1
    sharpness: float = 3.0
    patience: int = 2

    def __post_init__(self) -> None:
        _one_of(self.kind, "kind", CURRICULUM_KINDS)
        _unit(self.start, "start")
        _unit(self.end, "end")
        _check(self.start <= self.end, "start", f"{self.start} exceeds curriculum.end={self.end}")
        self.build()  # the chosen kind checks its own parameters

    def build(self) -> BaseCurriculum:
        """The curriculum object of ``kind``, from the parameters that kind reads."""
        cls = CURRICULA[self.kind]
        try:
            return build_curriculum(self.kind, **{p: getattr(self, p) for p in cls.params})
        except FSRFError as err:  # its messages already say "curriculum.<param>"
            raise FSRFError(str(err).removeprefix("curriculum.")) from None


@dataclass(frozen=True)
class MissingConfig:
    """How incomplete views are simulated in training and validated."""

    simulator: str = "random"
    complete_share: float = 0.2
    modality_share: float = 0.5
    valid_rates: tuple[float, ...] = EVAL_RATES
    eval_seed: int = 1111

    def __post_init__(self) -> None:
        _one_of(self.simulator, "simulator", SIMULATOR_NAMES)
        _unit(self.complete_share, "complete_share")
        _unit(self.modality_share, "modality_share")
        _check(len(self.valid_rates) > 0, "valid_rates", "is empty, expected at least one rate")
        for rate in self.valid_rates:
            _unit(rate, "valid_rates")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then cosine decay, stepped per batch."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", f"{self.lr} must be > 0")
        _check(self.weight_decay >= 0, "weight_decay", f"{self.weight_decay} must be >= 0")
        _check(self.batch_size >= 2, "batch_size", f"{self.batch_size} must be >= 2")
        _unit(self.warmup_fraction, "warmup_fraction")
        _check(self.grad_clip >= 0, "grad_clip", f"{self.grad_clip} must be >= 0 (0 = off)")


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, seed, device, selection and checkpoints."""

    epochs: int = 20
    seed: int = 1111
    device: str = "auto"
    precision: str = "fp32"
    select_metric: str = "MAE"
    patience: int = 0
    checkpoint_every: int = 1
    eval_batch_size: int = 256
    num_threads: int = 0

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", f"{self.epochs} must be >= 1")
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "device",
            f"{self.device!r} is not one of auto, cpu, cuda, cuda:N",
        )
        _one_of(self.precision, "precision", ("fp32", "bf16"))
        _check(self.patience >= 0, "patience", f"{self.patience} must be >= 0 (0 = off)")
        _check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        _check(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        _check(self.num_threads >= 0, "num_threads", "must be >= 0 (0 = torch's default)")


@dataclass(frozen=True)
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    missing: MissingConfig = field(default_factory=MissingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "curriculum": CurriculumConfig,
    "missing": MissingConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type hint, converting lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise FSRFError(f"{key}: {value!r} is not a list")
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise FSRFError(f"{key}: {value!r} has type {type(value).__name__}, expected {name}")


def config_from_dict(raw: Mapping[str, Any], *, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from nested mappings.

    Missing sections and keys take their defaults.

    Raises:
        FSRFError: one line naming ``source`` and the offending dotted key.
    """
    if not isinstance(raw, Mapping):
        raise FSRFError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    sections: dict[str, Any] = {}
    for name, section in raw.items():
        if name not in SECTIONS:
            raise FSRFError(
                f"{source}: unknown section {name!r} (known: {', '.join(SECTIONS)})"
            )
        cls = SECTIONS[name]
        if section is None:
            section = {}
        if not isinstance(section, Mapping):
            raise FSRFError(f"{source}: section {name!r} must be a mapping")
        hints = _field_types(cls)
        kwargs: dict[str, Any] = {}
        for key, value in section.items():
            dotted = f"{name}.{key}"
            if key not in hints:
                raise FSRFError(
                    f"{source}: unknown key {dotted!r} (known: {', '.join(hints)})"
                )
            try:
                kwargs[key] = _coerce(value, hints[key], dotted)
            except FSRFError as err:
                raise FSRFError(f"{source}: {err}") from None
        try:
            sections[name] = cls(**kwargs)
        except FSRFError as err:
            raise FSRFError(f"{source}: {name}.{err}") from None
    return Config(**sections)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Nested plain-Python form (tuples become lists), the inverse of :func:`config_from_dict`."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = dataclasses.asdict(getattr(config, name))
        out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


def flatten_config(config: Config) -> dict[str, Any]:
    """``{"loss.homo": 0.8, ...}``: every field by its dotted path."""
    return {
        f"{section}.{key}": value
        for section, fields in config_to_dict(config).items()
        for key, value in fields.items()
    }


def with_overrides(config: Config, overrides: Mapping[str, Any], *, source: str = "overrides") -> Config:
    """A new config with dotted-path values replaced (``{"loss.homo": 0.5}``)."""
    raw = config_to_dict(config)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in raw or not key:
            raise FSRFError(
                f"{source}: {dotted!r} is not a dotted config path like 'loss.homo' "
                f"(sections: {', '.join(SECTIONS)})"
            )
        if key not in raw[section]:
            raise FSRFError(
                f"{source}: unknown key {dotted!r} (known: {', '.join(raw[section])})"
            )
        raw[section][key] = value
    return config_from_dict(raw, source=source)
