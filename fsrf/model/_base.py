"""The model contract and the registry: ``model.name: <name>`` picks a registered model.

A model is one module that defines

* a frozen config dataclass, subclass of :class:`BaseModelConfig`: the run config's
  ``model`` section when ``model.name`` names it (its architecture and its loss weights;
  per-dataset defaults in ``dataset_defaults``);
* a subclass of :class:`BaseModel` decorated with :func:`register_model`.

The trainer owns everything else, once for every model: the task loss, incomplete views
and their masks, the curriculum, validation, checkpoints and logging (:mod:`fsrf.train`).
A model adds its own named loss terms through :meth:`BaseModel.training_step`.

Shape legend: B batch, V views (1 or 2), T_m steps of modality m, D_m its feature dim;
modalities always in the order text, audio, vision.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from fsrf._errors import FSRFError

if TYPE_CHECKING:
    from fsrf._config import Config
    from fsrf.data import Split


@dataclass(frozen=True)
class BaseModelConfig:
    """A model's config section. Subclasses add fields (with class defaults) and may check them.

    ``name`` is the registered name; ``dataset_defaults`` maps a dataset name (``mosi``,
    ``mosei``, ``sims``, ``synthetic``) to the field values that differ from the class
    defaults for it (the paper's per-dataset hyper-parameters), applied to fields a config
    file does not give.
    """

    name: str = ""
    dataset_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def weights(self) -> dict[str, float]:
        """The weight of each of the model's own loss terms, by term name (0 skips a term)."""
        return {}


class ModelOutput(Protocol):
    """What a forward pass gives: at least the (B,) prediction."""

    pred: torch.Tensor


@dataclass(frozen=True, eq=False)
class TrainBatch:
    """One training batch as the trainer hands it to :meth:`BaseModel.training_step`.

    Attributes:
        features: modality -> (V*B, T_m, D_m), the V incomplete views stacked along the batch
            (dropped frames zero-filled).
        valid: modality -> (V*B, T_m) bool, False at padding.
        keep: modality -> (V*B, T_m) bool, False at dropped frames.
        labels: (B,) targets.
        complete: modality -> (B, T_m, D_m), the batch before any drop, on the run's device (the
            trainer moves each batch there once; a model that reads it may still call ``.to``).
        views: V.
        task: the trainer's task loss, ``l1`` or ``mse`` (``train.task_loss``), for terms of the
            same form (e.g. distilling a prediction).
        extras: the side inputs the model names in :attr:`BaseModel.extras`, each (B, ...) on the
            run's device (one per sample, not repeated per view).
        index: (B,) long, each sample's position in the training split, on the run's device
            (for models that look samples up in a bank built by :meth:`BaseModel.on_epoch_end`);
            None where a caller has no split (a test's hand-made batch).
    """

    features: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    keep: dict[str, torch.Tensor]
    labels: torch.Tensor
    complete: dict[str, torch.Tensor]
    views: int
    task: str = "l1"
    index: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class EpochInfo:
    """What the trainer tells a model around each training epoch (:meth:`BaseModel.on_epoch_start`
    and :meth:`BaseModel.on_epoch_end`).

    Attributes:
        epoch: the epoch's 0-based index (the first epoch of a resumed run is the one it resumes at).
        epochs: ``train.epochs``, the number of epochs of the run.
        train: the complete training split (on the CPU, nothing dropped).
        device: the run's device.
        batch_size: ``train.eval_batch_size``, for a pass over ``train``.
    """

    epoch: int
    epochs: int
    train: Split
    device: torch.device
    batch_size: int

    def batches(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """The training split in order, complete, on the device: ``(index, features, valid)`` per batch."""
        for index, batch in self.train.batches(self.batch_size):
            yield (index.to(self.device), {m: x.to(self.device) for m, x in batch.features.items()},
                   {m: v.to(self.device) for m, v in batch.valid.items()})


@dataclass(frozen=True, eq=False)
class StepOutput:
    """What :meth:`BaseModel.training_step` gives back.

    Attributes:
        preds: one (B,) float32 prediction per view; the trainer's task loss reads them.
        terms: the model's own loss terms, unweighted, float32 scalars, by name (the keys of
            its config's ``weights()``; a term of weight 0 may be absent).
    """

    preds: list[torch.Tensor]
    terms: dict[str, torch.Tensor]


class BaseModel(nn.Module, abc.ABC):
    """The contract every model implements.

    Class attributes (shown by ``fsrf models``): ``name``; ``config_class``; ``paper`` (the
    reference); ``faithful`` (what follows the paper); ``deviations`` (what is reconstructed
    or changed, and why); ``extras``: the side inputs (:attr:`fsrf.data.Split.extras`) the
    model reads. A model with extras takes them as ``forward(..., extras=)`` (name -> (B, ...));
    every caller passes them, and only to such a model; ``extras_hint``: one sentence on how
    to get them, added to the error when the data lack them.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[BaseModelConfig]]
    extras: ClassVar[tuple[str, ...]] = ()
    extras_hint: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    faithful: ClassVar[str] = ""
    deviations: ClassVar[str] = ""

    def __init__(self, config: Config) -> None:
        super().__init__()
        if not isinstance(config.model, self.config_class):
            raise FSRFError(f"model.name: {config.model.name!r} config given to model {self.name!r}")
        if config.data.text_input == "tokens":  # BERT on token ids before every forward (fsrf.model._text)
            from fsrf.model._text import build_text_encoder, encode_text_hook

            self.text_encoder = build_text_encoder(config.data)
            self.register_forward_pre_hook(encode_text_hook, with_kwargs=True)

    def encode_inputs(
        self,
        features: dict[str, torch.Tensor],
        valid: dict[str, torch.Tensor],
        *,
        keep: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The inputs as the network reads them.

        With ``data.text_input: tokens`` the text token ids are replaced by the text encoder's
        hidden states (dropped tokens as [UNK], see :mod:`fsrf.model._text`); otherwise
        ``features`` is returned as it is. A forward pre-hook calls this before every
        :meth:`forward`; a model that hands inputs to its submodules without :meth:`forward`
        (LNLN's complete-input embeddings) calls it itself.
        """
        encoder = self._modules.get("text_encoder")
        if encoder is None:
            return features
        keep_text = None if keep is None else keep["text"]
        return {**features, "text": encoder(features["text"], valid["text"], keep_text)}

    @abc.abstractmethod
    def forward(
        self,
        features: dict[str, torch.Tensor],
        valid: dict[str, torch.Tensor],
        *,
        keep: dict[str, torch.Tensor] | None = None,
    ) -> ModelOutput:
        """Predict from (possibly incomplete) inputs.

        Args:
            features: modality -> (B, T_m, D_m); dropped frames already zero-filled.
            valid: modality -> (B, T_m) bool, False at padding.
            keep: modality -> (B, T_m) bool, False at dropped frames; None = nothing dropped.

        A model with :attr:`extras` adds ``extras: dict[str, torch.Tensor] | None = None``.
        """

    def on_epoch_start(self, info: EpochInfo) -> None:
        """Called by the trainer before each training epoch (default: nothing).

        For a model whose training changes with the epoch (a stage switch). The trainer calls it
        in eval mode, without gradients and under a random state of its own (seeded from
        ``train.seed`` and the epoch), so a model that does nothing here changes no stream.
        State that must survive a resume or reach evaluation goes in the state dict (a buffer,
        or :meth:`torch.nn.Module.get_extra_state`), or is recomputed here from ``info``.
        """

    def on_epoch_end(self, info: EpochInfo) -> None:
        """Called by the trainer after each training epoch, before validation (default: nothing).

        For a model that builds something from the training split with the epoch's final weights
        (a retrieval bank, a similarity matrix): validation, the checkpoint written after it and
        every evaluation of that checkpoint then read it. Same conditions as
        :meth:`on_epoch_start`.
        """

    def selectable(self) -> bool:
        """Whether the weights after this epoch may be selected as the run's best (default: True).

        The trainer asks after :meth:`on_epoch_end`; a model trained in stages says False during
        an earlier stage (a teacher's epochs), which then neither becomes best nor counts toward
        early stopping.
        """
        return True

    def training_views(self) -> int:
        """How many independent incomplete views of each batch :meth:`training_step` reads."""
        return 1

    def training_step(self, batch: TrainBatch) -> StepOutput:
        """Forward the views and compute the model's own loss terms (run under the trainer's autocast).

        The default runs :meth:`forward` on the stacked views (side inputs repeated per view)
        and adds no term.
        """
        out = self(batch.features, batch.valid, keep=batch.keep,
                   **side_inputs(self, batch.extras, views=batch.views))
        return StepOutput(preds=[p.float() for p in out.pred.chunk(batch.views)], terms={})


def side_inputs(model: BaseModel, extras: Mapping[str, torch.Tensor], *, views: int = 1) -> dict[str, Any]:
    """The keyword arguments that hand ``model`` its side inputs: ``{}`` for a model without
    :attr:`BaseModel.extras`, else ``{"extras": {name: (views*B, ...)}}``.

    Raises:
        FSRFError: a side input the model reads is not in ``extras`` (one line naming it).
    """
    if not model.extras:
        return {}
    missing = [k for k in model.extras if k not in extras]
    if missing:
        hint = f"; {model.extras_hint}" if model.extras_hint else ""
        raise FSRFError(f"model {model.name!r} reads side input(s) {', '.join(missing)} that the data do not "
                        f"hold (present: {', '.join(extras) or 'none'}){hint}")
    return {"extras": {k: extras[k].repeat(views, *([1] * (extras[k].dim() - 1))) for k in model.extras}}


def task_loss(pred: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The task term of one view: ``l1`` or ``mse`` between prediction and label."""
    return F.l1_loss(pred, labels) if kind == "l1" else F.mse_loss(pred, labels)


def total_loss(
    step: StepOutput, labels: torch.Tensor, weights: Mapping[str, float], *, task: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one definition of a training loss: the task term averaged over the views, plus
    each of the model's terms times its weight.

    Returns:
        ``(total, logged)``: the scalar to minimise, and every term by name, unweighted and
        detached, ``task`` first and ``total`` last.
    """
    terms = {"task": sum(task_loss(p, labels, task) for p in step.preds) / len(step.preds), **step.terms}
    total = terms["task"] + sum(weights[k] * v for k, v in step.terms.items())
    logged = {k: v.detach() for k, v in terms.items()}
    logged["total"] = total.detach()
    return total, logged


_REGISTRY: dict[str, type[BaseModel]] = {}


def register_model(cls: type[BaseModel]) -> type[BaseModel]:
    """Class decorator: register ``cls`` under ``cls.name`` (its config's ``name`` default)."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise FSRFError(f"model {cls.name!r} is registered twice")
    if cls.config_class().name != cls.name:
        raise FSRFError(f"model {cls.name!r}: its config_class's name default must be {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def model_names() -> tuple[str, ...]:
    """The registered model names, sorted."""
    return tuple(sorted(_REGISTRY))


def model_class(name: str) -> type[BaseModel]:
    """The registered model class of ``name``.

    Raises:
        FSRFError: one line listing the registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FSRFError(f"model.name: {name!r} is not a registered model (registered: "
                        f"{', '.join(model_names())})") from None


def model_config_class(name: str) -> type[BaseModelConfig]:
    """The config section class of model ``name``."""
    return model_class(name).config_class


def build_model(config: Config) -> BaseModel:
    """The model ``config.model.name`` names, built from the run config."""
    return model_class(config.model.name)(config)
