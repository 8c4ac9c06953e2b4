"""Frozen configuration dataclasses, the single source of truth for a run.

A YAML file is their serialised form: one mapping per section (``data``,
``model``, ``curriculum``, ``missing``, ``optim``, ``train``). The ``model``
section belongs to the model that ``model.name`` names (default ``fsrf``): its
architecture and its loss weights, with that model's per-dataset defaults for
the keys a file does not give. Dotted paths (``model.homo``, ``curriculum.kind``)
name a field everywhere: in ``--set`` overrides, in search spaces and in the
trial store's columns. Nothing mutates a config after construction; overrides
build a new one.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsrf._constants import EVAL_RATES, LABEL_BOUNDS, MODALITIES, TEXT_INPUTS, TEXT_PROTOCOLS
from fsrf._errors import FSRFError
from fsrf._validate import check, check_one_of, check_unit
from fsrf.curriculum import CURRICULA, BaseCurriculum, build_curriculum
from fsrf.model import BaseModelConfig, FSRFConfig, model_config_class, model_names

DATASETS = ("synthetic", "mosi", "mosei", "sims")
CURRICULUM_KINDS = ("constant", "linear", "step", "cosine", "exponential", "adaptive", "replay")
SIMULATOR_NAMES = ("random", "modality", "mixed")
SYNTHETIC_KINDS = ("basic", "recovery")
SYNTHETIC_LABELS = ("shared", "specific")
PRECISIONS = ("fp32", "bf16", "fp16")


_check, _unit, _one_of = check, check_unit, check_one_of


@dataclass(frozen=True)
class DataConfig:
    """Which data, and the shapes the model is built for.

    ``text_input`` is ``features`` (MMSA's precomputed BERT ``text`` features, (N, L, text_dim))
    or ``tokens`` (``text_bert``'s ids through the BERT-family model in the local directory
    ``text_model``, frozen or with ``text_finetune``; ``text_dim`` is then its hidden size;
    see :mod:`fsrf.model._text`).

    Domain generalisation (DG) when ``domains`` is not empty (:mod:`fsrf.data._domains`): train on
    every domain but ``target``, select on their validation splits, test on ``target``'s test
    split. Domains are MMSA datasets (``mosi``, ``mosei``, ``sims``, one ``domain_paths`` file
    each; ``dataset`` must be the target's, whose metrics are reported) or, with ``dataset:
    synthetic``, synthetic domains with a planted shift (``domain_shift``). Each domain's own
    feature dims are recorded in ``domain_<m>_dims`` (per-domain input projections read them);
    ``<m>_dim`` is their maximum, the width the features are zero-padded to. Domains whose labels
    span different ranges (SIMS [-1, 1] with MOSI/MOSEI [-3, 3]) are refused unless
    ``domain_label_rescale`` maps each source domain's labels linearly onto the target's range.

    ``prompts`` is a CSV of per-clip text prompts (``video_id,clip_id,prompt``, MMSLF's format),
    joined on the MMSA ids and encoded as hashed word/word-pair ids into ``Split.extras["prompt"]``
    (:mod:`fsrf.data._prompts`), for a model that reads prompts (``mmslf``).
    """

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
    synthetic_cue_frames: bool = False
    text_input: str = "features"
    text_model: str | None = None
    text_finetune: bool = False
    text_checkpointing: bool = False
    domains: tuple[str, ...] = ()
    target: str | None = None
    domain_paths: tuple[str, ...] = ()
    domain_text_dims: tuple[int, ...] = ()
    domain_audio_dims: tuple[int, ...] = ()
    domain_vision_dims: tuple[int, ...] = ()
    domain_shift: float = 1.0
    domain_label_rescale: bool = False
    prompts: str | None = None

    def __post_init__(self) -> None:
        _one_of(self.dataset, "dataset", DATASETS)
        self._check_domains()
        _one_of(self.text_input, "text_input", TEXT_INPUTS)
        if self.text_input == "tokens":
            _check(bool(self.text_model), "text_model",
                   "data.text_input: tokens needs the directory of a BERT-family model and its tokenizer, "
                   "written by save_pretrained (bert-base-uncased for MOSI/MOSEI, bert-base-chinese for SIMS)")
            _check(self.text_finetune or not self.text_checkpointing, "text_checkpointing",
                   "needs data.text_finetune: true (a frozen encoder runs without gradient)")
        else:
            for key in ("text_model", "text_finetune", "text_checkpointing"):
                _check(getattr(self, key) in (None, False), key,
                       f"{getattr(self, key)!r} is read only with data.text_input: tokens "
                       f"(text_input is {self.text_input!r}); leave it {'null' if key == 'text_model' else 'false'}")
        _one_of(self.synthetic_kind, "synthetic_kind", SYNTHETIC_KINDS)
        _one_of(self.synthetic_label, "synthetic_label", SYNTHETIC_LABELS)
        _check(self.synthetic_label_noise >= 0, "synthetic_label_noise",
               f"{self.synthetic_label_noise} must be >= 0")
        _check(self.synthetic_latent >= 1, "synthetic_latent", f"{self.synthetic_latent} must be >= 1")
        if self.synthetic_cue_frames:
            _check(self.synthetic_kind == "recovery", "synthetic_cue_frames",
                   f"is read by the recovery generator only (synthetic_kind is {self.synthetic_kind!r})")
            _check(min(self.audio_len, self.vision_len) >= 3, "synthetic_cue_frames",
                   f"needs audio_len and vision_len >= 3 (one window per third; {self.audio_len}, {self.vision_len})")
        for m in MODALITIES:
            for kind in ("dim", "len"):
                key = f"{m}_{kind}"
                _check(getattr(self, key) >= 1, key, f"{getattr(self, key)} must be >= 1")
        for key in ("synthetic_train", "synthetic_valid", "synthetic_test"):
            _check(getattr(self, key) >= 2, key, f"{getattr(self, key)} must be >= 2")

    def _check_domains(self) -> None:
        """The DG keys agree with each other (one-line errors naming the key)."""
        _check(self.domain_shift >= 0, "domain_shift", f"{self.domain_shift} must be >= 0")
        if not self.domains:
            for key in ("target", "domain_paths", *(f"domain_{m}_dims" for m in MODALITIES)):
                _check(getattr(self, key) in (None, ()), key,
                       f"{getattr(self, key)!r} is read only with data.domains (domain generalisation); leave it empty")
            _check(not self.domain_label_rescale, "domain_label_rescale",
                   "is read only with data.domains (domain generalisation); leave it false")
            return
        n = len(self.domains)
        _check(n >= 2, "domains", f"{list(self.domains)} needs at least two domains (sources and a target)")
        _check(len(set(self.domains)) == n, "domains", f"{list(self.domains)} names a domain twice")
        _check(self.target in self.domains, "target",
               f"{self.target!r} is not one of data.domains ({', '.join(self.domains)})")
        _check(self.path is None, "path", "must be null with data.domains (each domain has its own file: data.domain_paths)")
        _check(self.text_input == "features", "text_input", "domain generalisation reads text features only")
        for m in MODALITIES:
            key, dims = f"domain_{m}_dims", getattr(self, f"domain_{m}_dims")
            _check(len(dims) == n, key, f"{list(dims)} has {len(dims)} entries, expected one per domain ({n})")
            _check(all(d >= 1 for d in dims), key, f"{list(dims)}: every dim must be >= 1")
            _check(getattr(self, f"{m}_dim") == max(dims), f"{m}_dim",
                   f"{getattr(self, f'{m}_dim')} must be the largest of data.{key} ({max(dims)}), "
                   "the width every domain is zero-padded to")
        if self.dataset == "synthetic":
            _check(not self.domain_paths, "domain_paths", "synthetic domains are generated; leave it empty")
        else:
            real = [d for d in self.domains if d not in DATASETS[1:]]
            _check(not real, "domains", f"{', '.join(real)}: with real data every domain is one of mosi, mosei, sims")
            _check(self.target == self.dataset, "dataset",
                   f"{self.dataset!r} must be the target domain {self.target!r} (its metrics are reported)")
            _check(len(self.domain_paths) == n, "domain_paths",
                   f"{len(self.domain_paths)} paths, expected one MMSA pickle per domain ({n})")
            files = [os.path.realpath(p) for p in self.domain_paths]
            twice = next((j for j in range(n) if files[j] in files[:j]), None)
            _check(twice is None, "domain_paths",
                   "" if twice is None else f"{self.domain_paths[twice]} is the file of both "
                   f"{self.domains[files.index(files[twice])]!r} and {self.domains[twice]!r}: one dataset would be "
                   "on both sides of the split")
            ranges = sorted({LABEL_BOUNDS[d] for d in self.domains}, reverse=True)
            _check(len(ranges) == 1 or self.domain_label_rescale, "domains",
                   f"{list(self.domains)} mix label ranges ("
                   + "; ".join(f"{', '.join(d for d in self.domains if LABEL_BOUNDS[d] == b)}: [-{b:g}, {b:g}]"
                               for b in ranges)
                   + "): set data.domain_label_rescale: true to map each source domain's labels linearly "
                   f"onto the target's range ({self.target}), or leave the other domains out")

    def source_domains(self) -> tuple[str, ...]:
        """The DG training domains: every domain but the target (empty without DG)."""
        return tuple(d for d in self.domains if d != self.target)

    def dims(self) -> dict[str, int]:
        """Feature dimension per modality, in modality order."""
        return {m: getattr(self, f"{m}_dim") for m in MODALITIES}

    def lengths(self) -> dict[str, int]:
        """Padded sequence length per modality, in modality order."""
        return {m: getattr(self, f"{m}_len") for m in MODALITIES}

    def text_protocol(self) -> str:
        """How missing text is simulated: ``features-approx`` (rows of precomputed BERT features
        dropped, an approximation) or ``tokens`` (ids dropped to [UNK] before BERT, MMSA/LNLN)."""
        return TEXT_PROTOCOLS[self.text_input]


@dataclass(frozen=True)
class CurriculumConfig:
    """The training missing rate (maximum per-sample rate) as a function of the epoch.

    A ``replay`` curriculum may also set other fields per segment (``replay_fields``,
    ``replay_values``; see :meth:`replayed_at`): loss weights and the optimiser's learning rates
    and weight decay, as a population-based search's winner followed them (``fsrf.train`` checks
    which fields may be replayed and applies them at each epoch's start).
    """

    kind: str = "linear"
    start: float = 0.0
    end: float = 0.7
    warmup_epochs: int = 0
    ramp_epochs: int = 10
    step_epochs: int = 3
    step_size: float = 0.1
    sharpness: float = 3.0
    patience: int = 2
    replay_epochs: tuple[int, ...] = ()
    replay_rates: tuple[float, ...] = ()
    replay_fields: tuple[str, ...] = ()
    replay_values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _one_of(self.kind, "kind", CURRICULUM_KINDS)
        _unit(self.start, "start")
        _unit(self.end, "end")
        _check(self.start <= self.end, "start", f"{self.start} exceeds curriculum.end={self.end}")
        self.build()  # the chosen kind checks its own parameters
        if self.replay_fields or self.replay_values:
            _check(self.kind == "replay", "replay_fields", f"needs curriculum.kind: replay, not {self.kind!r}")
            _check(len(set(self.replay_fields)) == len(self.replay_fields), "replay_fields",
                   f"{list(self.replay_fields)} names a field twice")
            want = len(self.replay_epochs) * len(self.replay_fields)
            _check(len(self.replay_values) == want, "replay_values",
                   f"{len(self.replay_values)} values, expected {want}: one per replay_fields entry "
                   f"({len(self.replay_fields)}) for each of the {len(self.replay_epochs)} replay_epochs")
            for i, value in enumerate(self.replay_values):
                _check(math.isfinite(value), "replay_values", f"[{i}] is {value}, expected a finite number")

    def replayed_at(self, epoch: int) -> dict[str, float]:
        """The ``replay_fields`` values of the segment that holds ``epoch`` (from 0); ``{}`` if none.

        ``replay_values`` lists them segment by segment: ``replay_values[i * F + j]`` is field ``j``
        (of F) from ``replay_epochs[i]`` on (before the first point, the first segment's).
        """
        if not self.replay_fields:
            return {}
        width = len(self.replay_fields)
        segment = max(0, bisect.bisect_right(self.replay_epochs, epoch) - 1)
        return dict(zip(self.replay_fields, self.replay_values[segment * width:(segment + 1) * width]))

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
    """AdamW with linear warm-up then cosine decay, stepped per batch.

    ``text_lr`` is the peak learning rate of a fine-tuned text encoder (``data.text_finetune``),
    under the same warm-up and decay.
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    text_lr: float = 5e-5

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", f"{self.lr} must be > 0")
        _check(self.text_lr > 0, "text_lr", f"{self.text_lr} must be > 0")
        _check(self.weight_decay >= 0, "weight_decay", f"{self.weight_decay} must be >= 0")
        _check(self.batch_size >= 2, "batch_size", f"{self.batch_size} must be >= 2")
        _unit(self.warmup_fraction, "warmup_fraction")
        _check(self.grad_clip >= 0, "grad_clip", f"{self.grad_clip} must be >= 0 (0 = off)")


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, seed, device, numerics, selection and checkpoints.

    ``precision`` is ``fp32``, ``bf16`` (autocast; losses in float32) or ``fp16`` (autocast
    with a gradient scaler, CUDA only); ``tf32`` lets CUDA float32 matmuls and cuDNN use TF32
    (no effect on the CPU); ``compile`` runs the model through ``torch.compile`` (eager if
    compiling fails); ``deterministic`` turns on torch's deterministic algorithms for the run
    (resumed runs equal uninterrupted ones on a GPU too; on the CPU they always do).
    """

    epochs: int = 20
    seed: int = 1111
    device: str = "auto"
    precision: str = "fp32"
    tf32: bool = False
    compile: bool = False
    deterministic: bool = False
    select_metric: str = "MAE"
    patience: int = 0
    checkpoint_every: int = 1
    eval_batch_size: int = 256
    num_threads: int = 0
    task_loss: str = "l1"

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "epochs", f"{self.epochs} must be >= 1")
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "device",
            f"{self.device!r} is not one of auto, cpu, cuda, cuda:N",
        )
        _one_of(self.precision, "precision", PRECISIONS)
        _check(not (self.precision == "fp16" and self.device == "cpu"), "precision",
               "fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        _check(self.patience >= 0, "patience", f"{self.patience} must be >= 0 (0 = off)")
        _check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        _check(self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        _check(self.num_threads >= 0, "num_threads", "must be >= 0 (0 = torch's default)")
        _one_of(self.task_loss, "task_loss", ("l1", "mse"))


@dataclass(frozen=True)
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: BaseModelConfig = field(default_factory=FSRFConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    missing: MissingConfig = field(default_factory=MissingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": BaseModelConfig,  # the class of the model `model.name` names
    "curriculum": CurriculumConfig,
    "missing": MissingConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


def _field_types(cls: type) -> dict[str, Any]:
    """Each dataclass field's type hint (class variables are not fields)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


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


_LEGACY = {
    "loss": "this config is from before the model contract: the `loss` section's weights moved into "
            "the `model` section (loss.homo -> model.homo, ...) and loss.task to train.task_loss",
}


def _build_section(cls: type, name: str, section: Mapping[str, Any], source: str,
                   defaults: Mapping[str, Any] | None = None) -> Any:
    """``cls(**section)`` with every key and value checked; one-line errors naming ``source``."""
    hints = _field_types(cls)
    kwargs: dict[str, Any] = dict(defaults or {})
    for key, value in section.items():
        dotted = f"{name}.{key}"
        if key not in hints:
            raise FSRFError(f"{source}: {_unknown_key(name, key, hints, section)}")
        try:
            kwargs[key] = _coerce(value, hints[key], dotted)
        except FSRFError as err:
            raise FSRFError(f"{source}: {err}") from None
    try:
        return cls(**kwargs)
    except FSRFError as err:
        raise FSRFError(f"{source}: {name}.{err}") from None


def _unknown_key(name: str, key: str, hints: Mapping[str, Any], section: Mapping[str, Any]) -> str:
    dotted = f"{name}.{key}"
    if name == "model":
        model = section.get("name", FSRFConfig.name)
        owners = [m for m in model_names() if m != model and key in _field_types(model_config_class(m))]
        if owners:
            return f"{dotted} is a key of model {', '.join(owners)}, not of {model!r} (model.name)"
        return f"unknown key {dotted!r} for model {model!r} (known: {', '.join(hints)})"
    return f"unknown key {dotted!r} (known: {', '.join(hints)})"


def config_from_dict(raw: Mapping[str, Any], *, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from nested mappings.

    Missing sections and keys take their defaults; the ``model`` section is the section of
    the model ``model.name`` names (``fsrf`` if none), and its missing keys take that model's
    defaults for ``data.dataset``.

    Raises:
        FSRFError: one line naming ``source`` and the offending dotted key.
    """
    if not isinstance(raw, Mapping):
        raise FSRFError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    given: dict[str, Mapping[str, Any]] = {}
    for name, section in raw.items():
        if name in _LEGACY:
            raise FSRFError(f"{source}: section {name!r}: {_LEGACY[name]}")
        if name not in SECTIONS:
            raise FSRFError(f"{source}: unknown section {name!r} (known: {', '.join(SECTIONS)})")
        section = {} if section is None else section
        if not isinstance(section, Mapping):
            raise FSRFError(f"{source}: section {name!r} must be a mapping")
        given[name] = section
    sections: dict[str, Any] = {
        name: _build_section(cls, name, given[name], source)
        for name, cls in SECTIONS.items()
        if name in given and name != "model"
    }
    model = given.get("model", {})
    model_name = model.get("name", FSRFConfig.name)
    if not isinstance(model_name, str):
        raise FSRFError(f"{source}: model.name: {model_name!r} is not a string")
    try:
        cls = model_config_class(model_name)
    except FSRFError as err:
        raise FSRFError(f"{source}: {err}") from None
    dataset = sections.get("data", DataConfig()).dataset
    defaults = {k: v for k, v in cls.dataset_defaults.get(dataset, {}).items() if k not in model}
    sections["model"] = _build_section(cls, "model", model, source, defaults)
    return Config(**sections)


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Nested plain-Python form (tuples become lists), the inverse of :func:`config_from_dict`."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = dataclasses.asdict(getattr(config, name))
        out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
    return out


def flatten_config(config: Config) -> dict[str, Any]:
    """``{"model.homo": 0.8, ...}``: every field by its dotted path."""
    return {
        f"{section}.{key}": value
        for section, fields in config_to_dict(config).items()
        for key, value in fields.items()
    }


def with_overrides(config: Config, overrides: Mapping[str, Any], *, source: str = "overrides") -> Config:
    """A new config with dotted-path values replaced (``{"model.homo": 0.5}``; a new ``model.name`` starts from that model's defaults)."""
    raw = config_to_dict(config)
    name = overrides.get("model.name", raw["model"]["name"])
    if name != raw["model"]["name"]:  # another model: its own section, with its defaults
        raw["model"] = {"name": name}
        try:
            model_config_class(name)
        except FSRFError as err:
            raise FSRFError(f"{source}: {err}") from None
        section_keys = set(_field_types(model_config_class(name)))
    else:
        section_keys = set(raw["model"])
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in raw or not key:
            raise FSRFError(
                f"{source}: {dotted!r} is not a dotted config path like 'model.homo' "
                f"(sections: {', '.join(SECTIONS)})"
            )
        known = section_keys if section == "model" else raw[section]
        if key not in known:
            message = _unknown_key(section, key, dict.fromkeys(known), {"name": name})
            raise FSRFError(f"{source}: {message}")
        raw[section][key] = value
    return config_from_dict(raw, source=source)
