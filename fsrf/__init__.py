"""FSRF: Factorization-guided Semantic Recovery for incomplete multimodal sentiment analysis.

The public surface of the model library. Nothing here imports Ray or Optuna,
and importing does no work: data load, device choice and seeding happen when
:func:`train` runs.

Example:
    >>> from fsrf import Config, train
    >>> result = train(Config(), out_dir="runs/demo")      # doctest: +SKIP
"""

from fsrf._checkpoint import load_checkpoint, load_weights
from fsrf._config import (
    Config,
    CurriculumConfig,
    DataConfig,
    MissingConfig,
    OptimConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    flatten_config,
    with_overrides,
)
from fsrf._constants import EVAL_RATES, MISSING_PATTERNS, MODALITIES, OBJECTIVE
from fsrf._device import resolve_device
from fsrf._errors import FSRFError, NonFiniteLossError
from fsrf._inference import LoadedModel, load_model
from fsrf._provenance import git_commit, provenance, record_provenance, version_line
from fsrf._run_data import load_dataset
from fsrf._tensorboard import TensorBoardLog, write_hparams_config
from fsrf._yaml import (
    atomic_write,
    atomic_write_text,
    dump_config,
    load_config,
    parse_overrides,
    read_yaml,
    save_config,
)
from fsrf.model import (
    FSRF,
    BaseModel,
    BaseModelConfig,
    FSRFConfig,
    FSRFOutput,
    PlainConfig,
    build_model,
    model_names,
)
from fsrf.train import Report, TrainResult, train

__all__ = [
    "EVAL_RATES",
    "FSRF",
    "MISSING_PATTERNS",
    "MODALITIES",
    "OBJECTIVE",
    "BaseModel",
    "BaseModelConfig",
    "Config",
    "CurriculumConfig",
    "DataConfig",
    "FSRFConfig",
    "FSRFError",
    "FSRFOutput",
    "LoadedModel",
    "MissingConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "PlainConfig",
    "Report",
    "TensorBoardLog",
    "TrainConfig",
    "TrainResult",
    "atomic_write",
    "atomic_write_text",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "flatten_config",
    "git_commit",
    "load_checkpoint",
    "load_config",
    "load_dataset",
    "load_model",
    "load_weights",
    "model_names",
    "parse_overrides",
    "provenance",
    "read_yaml",
    "record_provenance",
    "resolve_device",
    "save_config",
    "train",
    "version_line",
    "with_overrides",
    "write_hparams_config",
]
