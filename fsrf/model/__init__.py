"""The models behind one contract, and their registry (``model.name`` picks one).

Adding a model is one module in ``fsrf/model/zoo/`` (its config section and its network,
registered with :func:`register_model`), one config under ``configs/`` and one search space
under ``tuning/spaces/``; nothing else is edited: every module of the zoo is imported here.
"""

import importlib
import pkgutil

from fsrf.model import zoo as _zoo
from fsrf.model._base import (
    BaseModel,
    BaseModelConfig,
    EpochInfo,
    ModelOutput,
    StepOutput,
    TrainBatch,
    build_model,
    model_class,
    model_config_class,
    model_names,
    register_model,
    side_inputs,
    task_loss,
    total_loss,
)
from fsrf.model._text import TextEncoder, TextModelInfo, read_text_model
from fsrf.model.zoo.fsrf import FSRF, FSRFConfig, FSRFOutput
from fsrf.model.zoo.plain import Plain, PlainConfig

for _module in pkgutil.iter_modules(_zoo.__path__):
    importlib.import_module(f"{_zoo.__name__}.{_module.name}")  # registers its model

__all__ = [
    "FSRF",
    "BaseModel",
    "BaseModelConfig",
    "EpochInfo",
    "FSRFConfig",
    "FSRFOutput",
    "ModelOutput",
    "Plain",
    "PlainConfig",
    "StepOutput",
    "TextEncoder",
    "TextModelInfo",
    "TrainBatch",
    "build_model",
    "model_class",
    "model_config_class",
    "model_names",
    "read_text_model",
    "register_model",
    "side_inputs",
    "task_loss",
    "total_loss",
]
