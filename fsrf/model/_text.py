"""Text through BERT tokens (``data.text_input: tokens``): the MMSA/LNLN token protocol.

With ``tokens`` a dataset's ``features["text"]`` holds, per position, the token id and the
segment id of MMSA's ``text_bert`` as floats, (N, L, 2), instead of precomputed BERT
features. Every model gets a :class:`TextEncoder` (attribute ``text_encoder``) and a
forward pre-hook that, before each ``forward(features, valid, *, keep)``, rebuilds the ids
of the incomplete view and replaces ``features["text"]`` by the encoder's last hidden state
(B, L, hidden); the models themselves are unchanged. The protocol is MMSA's ``generate_m``
(as LNLN uses it):

* a dropped valid position (``valid & ~keep``; the simulators and the evaluation masks
  already keep the first and last valid token, [CLS] and [SEP]) gets the tokenizer's
  [UNK] id, read from the model directory, and stays attended;
* padding positions keep the stored ids and are not attended (mask = ``valid``);
* BERT then runs on the corrupted ids, so no kept position encodes a dropped word;
* a sample whose text keeps no valid position (the whole-modality protocol) gets a zero
  output and BERT does not run on it; padding positions are zero in the output too.

The segment ids of dropped positions read 0 (the trainer zero-fills dropped positions
before the model sees them; MMSA's single-sentence segment ids are all 0).

The encoder is loaded from a local directory only (``local_files_only``; nothing is ever
downloaded), the one that ``save_pretrained`` writes. Frozen (the default) it runs in eval
mode under ``no_grad``, is hidden from ``parameters()`` and ``state_dict()`` and so is not
in checkpoints: they store a fingerprint of its weights instead, and loading a checkpoint
whose fingerprint differs from the directory's weights fails. Fine-tuned
(``data.text_finetune``) it is an ordinary submodule: trained with ``optim.text_lr``,
saved in checkpoints, optionally with activation checkpointing (``data.text_checkpointing``).

``transformers`` is imported only here, inside functions, when ``tokens`` is used.

Shape legend: N samples, B batch, L text positions, H the encoder's hidden size.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fsrf._errors import FSRFError

if TYPE_CHECKING:
    from fsrf._config import DataConfig

TOKEN_CHANNELS = 2
"""Channels of ``features["text"]`` in tokens mode: token id, segment id."""

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model")
_HOW_TO_GET = ("save a BERT model and its tokenizer there with save_pretrained on a machine with "
               "internet: AutoModel.from_pretrained(NAME).save_pretrained(DIR) and "
               "AutoTokenizer.from_pretrained(NAME).save_pretrained(DIR), NAME = bert-base-uncased "
               "for MOSI/MOSEI, bert-base-chinese for SIMS")


@dataclass(frozen=True, kw_only=True)
class TextModelInfo:
    """What the token protocol reads from a model directory (no weights loaded).

    Attributes:
        directory: the directory (``data.text_model``).
        hidden_size: H, the width of the last hidden state (must equal ``data.text_dim``).
        vocab_size: rows of the embedding; every stored token id must be below it.
        type_vocab_size: segment ids must be below it (0 when the model has no segments).
        max_positions: the longest sequence the model takes (0 when unbounded or unknown).
        unk_id: the tokenizer's [UNK] id, given to dropped positions.
    """

    directory: str
    hidden_size: int
    vocab_size: int
    type_vocab_size: int
    max_positions: int
    unk_id: int


def _fail(directory: str | Path, problem: str) -> FSRFError:
    return FSRFError(f"data.text_model: {directory}: {problem}")


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No transformers progress bars while loading (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _check_directory(directory: str) -> Path:
    """The directory exists and holds a config, weights and tokenizer files."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise _fail(directory, f"no such directory; {_HOW_TO_GET}")
    if not (path / "config.json").is_file():
        raise _fail(directory, f"missing config.json; {_HOW_TO_GET}")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise _fail(directory, f"missing the weights ({' or '.join(_WEIGHT_FILES[:2])}); {_HOW_TO_GET}")
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise _fail(directory, f"missing the tokenizer files (vocab.txt or tokenizer.json); {_HOW_TO_GET}")
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def read_text_model(directory: str) -> TextModelInfo:
    """Read a model directory's config and tokenizer (not its weights) and check them.

    Raises:
        FSRFError: one line naming the directory: it is missing or incomplete (with how to
            obtain the weights), unreadable, or its vocabulary has no [UNK] token.
    """
    path = _check_directory(directory)
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001  (transformers raises OSError, ValueError, KeyError, ...)
        raise _fail(directory, f"not a readable model directory ({_first_line(err)})") from None
    hidden = getattr(config, "hidden_size", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(hidden, int) or not isinstance(vocab, int):
        raise _fail(directory, f"config.json of model type {config.model_type!r} has no hidden_size/vocab_size; "
                               "expected a BERT-family encoder")
    unk = tokenizer.unk_token_id
    if (
        tokenizer.unk_token is None
        or unk is None
        or not 0 <= unk < vocab
        or tokenizer.convert_ids_to_tokens(unk) != tokenizer.unk_token
    ):
        raise _fail(directory, "the tokenizer's vocabulary has no [UNK] token (unk_token), which the token "
                               "protocol gives to dropped positions")
    return TextModelInfo(
        directory=str(directory),
        hidden_size=hidden,
        vocab_size=vocab,
        type_vocab_size=int(getattr(config, "type_vocab_size", 0) or 0),
        max_positions=int(getattr(config, "max_position_embeddings", 0) or 0),
        unk_id=int(unk),
    )


def check_text_dim(info: TextModelInfo, text_dim: int) -> None:
    """``data.text_dim`` must equal the encoder's hidden size (the models read H-wide text)."""
    if info.hidden_size != text_dim:
        raise FSRFError(
            f"data.text_dim: config says {text_dim} but the text encoder in {info.directory} has "
            f"hidden_size {info.hidden_size} (set data.text_dim={info.hidden_size})"
        )


def check_tokens(info: TextModelInfo, tokens: torch.Tensor, *, text_len: int, where: str) -> None:
    """Stored ids and segment ids must fit the model (one line naming ``where`` otherwise).

    Args:
        info: the model directory's facts.
        tokens: (N, L, 2) token ids and segment ids as floats.
        text_len: ``data.text_len``, which must not exceed the model's positions.
        where: names the data in the message (``<file> split 'train'``).
    """
    if info.max_positions and text_len > info.max_positions:
        raise FSRFError(
            f"data.text_len: {text_len} exceeds the {info.max_positions} positions of the text encoder in "
            f"{info.directory}"
        )
    if tokens.numel() == 0:
        return
    top = int(tokens[..., 0].max())
    if top >= info.vocab_size:
        raise FSRFError(
            f"{where} key 'text_bert': token id {top} is outside the vocabulary of {info.vocab_size} ids of "
            f"data.text_model {info.directory} (ids from another tokenizer?)"
        )
    segments = int(tokens[..., 1].max())
    if segments >= max(1, info.type_vocab_size):
        raise FSRFError(
            f"{where} key 'text_bert': segment id {segments} is outside the {info.type_vocab_size} segment "
            f"types of data.text_model {info.directory}"
        )


def _fingerprint(module: nn.Module) -> int:
    """A BLAKE2b digest of every tensor of ``module`` (names, dtypes, shapes, bytes), as an int64."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


class TextEncoder(nn.Module):
    """A BERT-family encoder of corrupted token ids (see the module docstring).

    Args:
        directory: the model directory (``data.text_model``), read with ``local_files_only``.
        finetune: train the encoder (``data.text_finetune``); frozen otherwise.
        checkpointing: activation checkpointing in training (``data.text_checkpointing``;
            fine-tuned only).

    Attributes:
        info: what was read from the directory (hidden size, vocabulary, [UNK] id).
        finetune: whether the encoder is trained.

    Raises:
        FSRFError: a missing or incomplete directory, a vocabulary without [UNK], a model
            that does not support checkpointing when asked for.
    """

    def __init__(self, *, directory: str, finetune: bool = False, checkpointing: bool = False) -> None:
        super().__init__()
        self.info = read_text_model(directory)
        self.finetune = bool(finetune)
        from transformers import AutoModel

        try:
            with _quiet_loading():
                bert = AutoModel.from_pretrained(self.info.directory, local_files_only=True)
        except Exception as err:  # noqa: BLE001  (any failure to load is a bad directory)
            raise _fail(directory, f"the weights do not load ({_first_line(err)})") from None
        bert = bert.float()
        self._segments = "token_type_ids" in inspect.signature(bert.forward).parameters
        if self.finetune:
            self.bert = bert
            if checkpointing:
                if not getattr(bert, "supports_gradient_checkpointing", False):
                    raise FSRFError(f"data.text_checkpointing: the model in {directory} does not support it")
                enable = getattr(bert, "activation_checkpointing_enable", None)  # transformers >= 5
                if enable is not None:
                    enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    bert.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            if checkpointing:
                raise FSRFError("data.text_checkpointing: needs data.text_finetune: true (a frozen encoder "
                                "runs without gradient)")
            bert.requires_grad_(False)
            bert.eval()
            self._frozen: tuple[nn.Module, ...] = (bert,)  # a tuple hides it from parameters() and state_dict()
            self.register_buffer("fingerprint", torch.tensor(_fingerprint(bert), dtype=torch.int64))

    @property
    def model(self) -> nn.Module:
        """The transformers model (frozen or trained)."""
        return self.bert if self.finetune else self._frozen[0]

    @property
    def hidden_size(self) -> int:
        """H, the width of the encoding (the directory's ``hidden_size``)."""
        return self.info.hidden_size

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> TextEncoder:
        """``to``/``cuda``/``float`` reach the hidden frozen model too."""
        super()._apply(fn, *args, **kwargs)
        if not self.finetune:
            self._frozen[0]._apply(fn)
        return self

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        """A frozen encoder's stored fingerprint must match the directory's weights."""
        key = prefix + "fingerprint"
        if not self.finetune and key in state_dict and int(state_dict[key]) != int(self.fingerprint):
            raise FSRFError(
                f"data.text_model: {self.info.directory} holds other weights than the frozen text encoder "
                "this checkpoint was trained with (their fingerprints differ)"
            )
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(
        self, tokens: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode one incomplete view of the text.

        Args:
            tokens: (B, L, 2) token ids and segment ids as floats (dropped positions may be 0).
            valid: (B, L) bool, True at real positions (the attention mask).
            keep: (B, L) bool, False at dropped positions; None = nothing dropped.

        Returns:
            (B, L, H): BERT's last hidden state on the ids with every dropped valid position
            replaced by [UNK]; zero at padding and for samples that keep no valid position.
        """
        if tokens.dim() != 3 or tokens.shape[-1] != TOKEN_CHANNELS:
            raise FSRFError(
                f"features['text']: shape {tuple(tokens.shape)} given, expected (B, L, {TOKEN_CHANNELS}) token "
                "and segment ids (data.text_input: tokens)"
            )
        valid = valid.to(tokens.device)
        kept = valid if keep is None else valid & keep.to(tokens.device)
        ids = tokens[..., 0].round().long().masked_fill(valid & ~kept, self.info.unk_id)  # (B, L)
        segments = tokens[..., 1].round().long()
        present = kept.any(dim=1)  # (B,)
        rows = None if bool(present.all()) else present.nonzero().squeeze(1)
        if rows is not None and rows.numel() == 0:
            return tokens.new_zeros(*tokens.shape[:2], self.info.hidden_size)
        pick = (lambda x: x) if rows is None else (lambda x: x.index_select(0, rows))
        hidden = self._encode(pick(ids), pick(valid), pick(segments))
        hidden = hidden * pick(valid).unsqueeze(-1).to(hidden.dtype)  # zero at padding
        if rows is None:
            return hidden
        out = hidden.new_zeros(*tokens.shape[:2], hidden.shape[-1])
        return out.index_copy(0, rows, hidden)

    def _encode(self, ids: torch.Tensor, valid: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": ids, "attention_mask": valid.long()}
        if self._segments:
            kwargs["token_type_ids"] = segments
        if self.finetune:
            return self.bert(**kwargs).last_hidden_state
        with torch.no_grad():
            return self._frozen[0](**kwargs).last_hidden_state

    def extra_repr(self) -> str:
        return f"directory={self.info.directory!r}, finetune={self.finetune}, hidden_size={self.info.hidden_size}"


def build_text_encoder(cfg: DataConfig) -> TextEncoder:
    """The text encoder ``data.text_model`` names, checked against ``data.text_dim``."""
    if cfg.text_model is None:  # DataConfig refuses tokens without a directory; a guard for hand-made configs
        raise FSRFError("data.text_model: data.text_input: tokens needs a model directory")
    encoder = TextEncoder(directory=cfg.text_model, finetune=cfg.text_finetune,
                          checkpointing=cfg.text_checkpointing)
    check_text_dim(encoder.info, cfg.text_dim)
    return encoder


def encode_text_hook(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Forward pre-hook of a model with a text encoder: ``forward(features, valid, *, keep)`` gets
    ``features`` with the text token ids replaced by the encoder's hidden states (a new dict)."""
    args, kwargs = tuple(args), dict(kwargs)
    features = args[0] if args else kwargs["features"]
    valid = args[1] if len(args) > 1 else kwargs["valid"]
    encoded = module.encode_inputs(features, valid, keep=kwargs.get("keep"))
    if args:
        return (encoded, *args[1:]), kwargs
    kwargs["features"] = encoded
    return args, kwargs


def text_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of ``model``'s text encoder (none when frozen or absent)."""
    encoder = getattr(model, "text_encoder", None)
    if not isinstance(encoder, TextEncoder):
        return []
    return [p for p in encoder.parameters() if p.requires_grad]
