"""Read and write MMSA processed feature files (thuiar/MMSA layout).

An MMSA file is a pickled dict with keys ``train``, ``valid`` and ``test``. Each
split is a dict of per-sample arrays (shape legend: N samples, L text positions,
T_m steps of modality m, D_m its feature dimension):

* ``text``: (N, L, 768) BERT features, the text input;
* ``text_bert``: (N, 3, L) input ids, attention mask, segment ids stored as floats;
  row 1 (the attention mask) marks the valid text positions. Without it, a text
  position is valid where its feature row is non-zero. With ``text_input="tokens"``
  the text input is its ids and segment ids, (N, L, 2) floats, and ``text`` is
  not read (nor required);
* ``audio``: (N, T_a, D_a) and ``vision``: (N, T_v, D_v);
* ``audio_lengths``, ``vision_lengths``: (N,) valid steps, unaligned files only;
  without them every step is valid;
* ``regression_labels``: (N,) and ``id``: (N,) ``video_id$_$clip_id`` strings;
* ``raw_text``, ``annotations``, ``classification_labels`` and SIMS's
  ``regression_labels_T/A/V``: present, ignored here.

Modalities are returned in the order text, audio, vision; the MMSA config's
(t, v, a)-ordered lists are never consulted.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fsrf._constants import DATASET_METRICS, MODALITIES, SPLITS, TEXT_INPUTS
from fsrf._errors import FSRFError
from fsrf.data._pickle import load_pickle_restricted
from fsrf.data._types import MultimodalDataset, Split

_LENGTH_KEYS = {"audio": "audio_lengths", "vision": "vision_lengths"}
_LABELS = "regression_labels"
_CHUNK_ELEMENTS = 1 << 24  # rows scanned at a time when checking big feature arrays


def load_mmsa(path: str | os.PathLike[str], *, name: str, text_input: str = "features") -> MultimodalDataset:
    """Load an MMSA pickle into tensors, validating every key the model uses.

    Features become float32 contiguous tensors that share memory with the
    unpickled arrays where the stored dtype is already float32. Non-finite
    feature values (COVAREP audio holds ``-inf``) are set to 0, with one warning
    per load that counts them per split and key.

    Args:
        path: the ``.pkl`` file.
        name: ``synthetic``, ``mosi``, ``mosei`` or ``sims`` (selects the metrics).
        text_input: ``features`` (the ``text`` BERT features) or ``tokens``
            (``text_bert``'s token ids and segment ids, for a BERT encoder).

    Returns:
        The dataset; each split holds features modality -> (N, T_m, D_m) float32
        (text (N, L, 2) ids and segment ids with ``tokens``), valid modality ->
        (N, T_m) bool, labels (N,) float32 and N ids.

    Raises:
        FSRFError: an unknown ``name``, an unreadable file, or a file that breaks
            the layout above (the message names the split, the key and what was
            expected).
    """
    if name not in DATASET_METRICS:
        known = ", ".join(sorted(DATASET_METRICS))
        raise FSRFError(f"dataset name {name!r} is unknown, expected one of {known}")
    if text_input not in TEXT_INPUTS:
        raise FSRFError(f"text_input: {text_input!r} is not one of {', '.join(TEXT_INPUTS)}")
    source = str(path)
    data = load_pickle_restricted(path)
    if not isinstance(data, dict):
        raise FSRFError(
            f"{source}: holds a {type(data).__name__}, "
            "expected a dict with keys train, valid, test"
        )
    for split in SPLITS:
        if split not in data:
            raise FSRFError(f"{source}: missing split {split!r}, expected keys train, valid, test")
        if not isinstance(data[split], dict):
            kind = type(data[split]).__name__
            raise FSRFError(f"{source}: split {split!r} holds a {kind}, expected a dict")
    bad_counts: dict[str, int] = {}
    splits: dict[str, Split] = {}
    for split in SPLITS:
        where = _Where(source, split)
        # Popping lets each raw array be freed once converted (MOSEI is ~14 GB).
        splits[split] = _read_split(data.pop(split), where=where, bad_counts=bad_counts, tokens=text_input == "tokens")
    _check_dims_agree(splits, source=source)
    if bad_counts:
        total = sum(bad_counts.values())
        detail = ", ".join(f"{key}: {count}" for key, count in bad_counts.items())
        warnings.warn(
            f"{source}: set {total} non-finite feature values to 0 ({detail})",
            RuntimeWarning,
            stacklevel=2,
        )
    return MultimodalDataset(name=name, source=source, **splits)


def save_mmsa(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write ``data`` as an MMSA pickle, atomically.

    The dict is pickled (protocol 4, so arrays over 4 GiB fit) to a temporary
    file in the destination directory and renamed into place, so a reader never
    sees a half-written file.

    Args:
        path: the destination ``.pkl``; its directory is created if needed.
        data: ``{"train": {...}, "valid": {...}, "test": {...}}`` in MMSA layout.
    """
    from fsrf._yaml import atomic_write  # here: fsrf._yaml imports the config, which imports fsrf.data

    atomic_write(path, lambda file: pickle.dump(data, file, protocol=4))


@dataclass(frozen=True)
class _Where:
    """Formats ``<file>: split '<split>' key '<key>' ...`` error messages."""

    source: str
    split: str

    def error(self, key: str, problem: str) -> FSRFError:
        return FSRFError(f"{self.source}: split {self.split!r} key {key!r} {problem}")


def _read_split(raw: dict[str, Any], *, where: _Where, bad_counts: dict[str, int], tokens: bool = False) -> Split:
    """Validate one split dict and convert it to a :class:`Split` (pops the feature keys)."""
    for key in ("text_bert" if tokens else "text", "audio", "vision", _LABELS, "id"):
        if key not in raw:
            why = " (data.text_input: tokens reads the BERT token ids from it)" if key == "text_bert" else ""
            raise FSRFError(f"{where.source}: split {where.split!r} is missing key {key!r}{why}")
    if tokens:
        raw.pop("text", None)  # the precomputed features are not read
        features = {"text": _token_features(raw, where=where)}
        features.update({m: _features(raw.pop(m), key=m, where=where) for m in MODALITIES[1:]})
    else:
        features = {m: _features(raw.pop(m), key=m, where=where) for m in MODALITIES}
    n = features["text"].shape[0]
    if n == 0:
        raise where.error("text", "has 0 samples, expected at least one")
    for m in ("audio", "vision"):
        _same_count(features[m].shape[0], n, key=m, where=where)

    labels = _array(raw[_LABELS], key=_LABELS, rank=1, shape="(N,)", where=where)
    _same_count(labels.shape[0], n, key=_LABELS, where=where)
    if not _is_real(labels.dtype):
        raise where.error(_LABELS, f"has dtype {labels.dtype}, expected real numbers")
    labels = labels.astype(np.float32)
    n_bad = int(np.count_nonzero(~np.isfinite(labels)))
    if n_bad:
        raise where.error(_LABELS, f"has {n_bad} NaN or infinite values, expected finite labels")

    ids = _array(raw["id"], key="id", rank=1, shape="(N,)", where=where)
    _same_count(ids.shape[0], n, key="id", where=where)

    for m in MODALITIES:
        count = _zero_non_finite(features[m])
        if count:
            bad_counts[f"{where.split}/{m}"] = count
    valid = {
        "text": _text_valid(raw, features["text"], where=where),
        "audio": _length_valid(raw, "audio", features["audio"], where=where),
        "vision": _length_valid(raw, "vision", features["vision"], where=where),
    }
    return Split(
        features={m: torch.from_numpy(x) for m, x in features.items()},
        valid={m: torch.from_numpy(v) for m, v in valid.items()},
        labels=torch.from_numpy(labels),
        ids=tuple(i.decode() if isinstance(i, bytes) else str(i) for i in ids.tolist()),
    )


def _array(value: Any, *, key: str, rank: int, shape: str, where: _Where) -> np.ndarray:
    """``np.asarray(value)`` with a rank check."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise where.error(key, f"is not an array ({err}), expected {shape}") from err
    if array.ndim != rank:
        raise where.error(key, f"has rank {array.ndim}, expected {rank} {shape}")
    return array


def _features(value: Any, *, key: str, where: _Where) -> np.ndarray:
    """A (N, T, D) float32, C-contiguous, writable array; no copy if already one."""
    array = _array(value, key=key, rank=3, shape="(N, T, D)", where=where)
    if not _is_real(array.dtype):
        raise where.error(key, f"has dtype {array.dtype}, expected real numbers")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not array.flags.writeable:  # e.g. read-only protocol-5 buffers
        array = array.copy()
    return array


def _is_real(dtype: np.dtype) -> bool:
    """Integer, float or bool: what a feature or label array may hold."""
    kinds = (np.integer, np.floating, np.bool_)
    return any(np.issubdtype(dtype, kind) for kind in kinds)


def _same_count(count: int, n: int, *, key: str, where: _Where) -> None:
    if count != n:
        raise where.error(
            key, f"has {count} samples but key 'text' has {n}, expected equal counts"
        )


def _chunks(array: np.ndarray) -> list[slice]:
    """Sample slices of about ``_CHUNK_ELEMENTS`` elements (bounds temporary memory)."""
    per_row = max(1, int(np.prod(array.shape[1:])))
    step = max(1, _CHUNK_ELEMENTS // per_row)
    return [slice(start, start + step) for start in range(0, array.shape[0], step)]


def _zero_non_finite(array: np.ndarray) -> int:
    """Set NaN/inf entries of a (N, T, D) array to 0 in place, in chunks; return the count."""
    count = 0
    for rows in _chunks(array):
        chunk = array[rows]
        bad = ~np.isfinite(chunk)
        n_bad = int(np.count_nonzero(bad))
        if n_bad:
            chunk[bad] = 0.0
            count += n_bad
    return count


def _token_features(raw: Mapping[str, Any], *, where: _Where) -> np.ndarray:
    """(N, L, 2) float32 token ids and segment ids of ``text_bert``, checked to be integers >= 0."""
    bert = _array(raw["text_bert"], key="text_bert", rank=3, shape="(N, 3, L)", where=where)
    if bert.shape[1] != 3:
        raise where.error("text_bert", f"has shape {bert.shape}, expected (N, 3, L)")
    if not _is_real(bert.dtype):
        raise where.error("text_bert", f"has dtype {bert.dtype}, expected numbers")
    if bert.shape[0] == 0:
        raise where.error("text_bert", "has 0 samples, expected at least one")
    for row, what in ((0, "token id"), (2, "segment id")):
        values = bert[:, row, :].astype(np.float64)
        bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values)) | (values >= 2**24)
        if np.any(bad):
            offending = values.flat[int(np.argmax(bad))]
            raise where.error("text_bert", f"row {row} holds {what} {offending!r}, expected integers in [0, 2^24)")
    return np.ascontiguousarray(np.stack([bert[:, 0, :], bert[:, 2, :]], axis=-1), dtype=np.float32)


def _text_valid(raw: Mapping[str, Any], text: np.ndarray, *, where: _Where) -> np.ndarray:
    """(N, L) bool from the attention mask, or from non-zero feature rows."""
    n, length = text.shape[:2]
    if "text_bert" not in raw:
        valid = np.empty((n, length), dtype=bool)
        for rows in _chunks(text):
            valid[rows] = np.any(text[rows] != 0, axis=-1)
        return valid
    bert = _array(raw["text_bert"], key="text_bert", rank=3, shape="(N, 3, L)", where=where)
    _same_count(bert.shape[0], n, key="text_bert", where=where)
    if bert.shape[1:] != (3, length):
        raise where.error(
            "text_bert", f"has shape {bert.shape}, expected (N, 3, {length}) to match key 'text'"
        )
    mask = bert[:, 1, :]
    if not _is_real(mask.dtype):
        raise where.error("text_bert", f"has dtype {bert.dtype}, expected numbers")
    return np.ascontiguousarray(mask > 0.5)


def _length_valid(
    raw: Mapping[str, Any], modality: str, features: np.ndarray, *, where: _Where
) -> np.ndarray:
    """(N, T) bool with the first ``length`` steps valid; all valid without lengths."""
    n, steps = features.shape[:2]
    key = _LENGTH_KEYS[modality]
    if key not in raw:
        return np.ones((n, steps), dtype=bool)
    lengths = _array(raw[key], key=key, rank=1, shape="(N,)", where=where)
    _same_count(lengths.shape[0], n, key=key, where=where)
    if not _is_real(lengths.dtype) or lengths.dtype == np.bool_:
        raise where.error(key, f"has dtype {lengths.dtype}, expected integers")
    values = lengths.astype(np.float64)
    outside = ~np.isfinite(values) | (values < 0) | (values > steps) | (values != np.round(values))
    if np.any(outside):
        offending = lengths[np.argmax(outside)].item()
        raise where.error(
            key,
            f"has value {offending!r}, expected integers in [0, {steps}] (T of key {modality!r})",
        )
    return np.arange(steps)[None, :] < values.astype(np.int64)[:, None]


def _check_dims_agree(splits: dict[str, Split], *, source: str) -> None:
    """Every split must share each modality's feature dimension D_m."""
    first = splits["train"].dims()
    for split, data in splits.items():
        for m, dim in data.dims().items():
            if dim != first[m]:
                raise FSRFError(
                    f"{source}: split {split!r} key {m!r} has feature dim {dim}, "
                    f"expected {first[m]} as in split 'train'"
                )
