"""Per-clip text prompts (MMSLF): read a user's CSV, join it on the MMSA ids, encode it offline.

Shape legend: N samples of a split, P = :data:`MAX_LEN` prompt id positions.

The CSV is the one MMSLF's prompt generator (``preprocess/Generate_Prompt.py``) writes: a header
with at least ``video_id``, ``clip_id`` and ``prompt`` (other columns, e.g. ``label`` and
``mode``, are ignored), one row per clip. A row joins the sample whose MMSA id is
``<video_id>$_$<clip_id>``; every sample of every split must have exactly one row.

Encoding (the documented offline prompt encoder): the prompt is lower-cased and split into words
(``[a-z0-9']+``); each word and each pair of adjacent words is hashed with CRC-32 into
``1 .. HASH_SPACE - 1`` (0 is padding), in reading order (word i, then the pair ending at word i),
truncated or zero-padded to P = :data:`MAX_LEN`. The ids go to ``Split.extras["prompt"]`` as
(N, P) long; a model folds them into its own buckets and keeps its own first positions
(:func:`fold`), then embeds them (hashed n-gram embeddings).

With ``data.text_input: tokens`` the prompt is instead tokenized by the tokenizer of
``data.text_model`` (local directory only; [CLS] ... [SEP], truncated to P) and stored as
token id + 1, 0 at padding (:func:`encode_prompt_tokens`), for a model that reads it through
that BERT.

:func:`synthetic_prompts` writes the matching CSV for the synthetic recovery data: its cue words
carry the planted clean sentiment score (the label without its noise), with noise, which the
features give only partly; with frame cues (``data.synthetic_cue_frames``) they say instead
where in the clip the sentiment shows (early, middle, late), not what it is (see its docstring).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsrf._constants import MODALITIES, SPLITS
from fsrf._errors import FSRFError
from fsrf.data._types import MultimodalDataset, Split

PROMPT = "prompt"
"""The side input's name in :attr:`fsrf.data.Split.extras`."""
COLUMNS = ("video_id", "clip_id", PROMPT)
"""The columns a prompt CSV must have (MMSLF's generator also writes ``label`` and ``mode``)."""
ID_SEPARATOR = "$_$"
HOW_TO = ("per-clip prompts come from a CSV with columns video_id,clip_id,prompt (the file MMSLF's "
          "preprocess/Generate_Prompt.py writes; for synthetic data `fsrf prompts --config C --out F` "
          "writes one with planted cues); set data.prompts to its path")
MAX_LEN = 64
"""P, the id positions the loader keeps per prompt (a model may read fewer)."""
HASH_SPACE = 2**20
"""The ids the loader writes lie in 1 .. HASH_SPACE - 1 (0 is padding)."""
_WORD = re.compile(r"[a-z0-9']+")


def read_prompts(path: str | Path) -> dict[str, str]:
    """The prompts of a CSV by MMSA id (``video_id$_$clip_id``).

    Raises:
        FSRFError: a missing or unreadable file, a header without the :data:`COLUMNS`, an empty
            id, an empty prompt, a duplicate id (one line naming the file, the line and the key).
    """
    return _read_prompts(Path(path))[0]


def _read_prompts(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """:func:`read_prompts`, and the CSV line of each id."""
    if not path.is_file():
        raise FSRFError(f"data.prompts: {path} does not exist; {HOW_TO}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise FSRFError(f"data.prompts: {path}: cannot be read as UTF-8 text ({err})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise FSRFError(f"data.prompts: {path}:1: header {','.join(header) or '(empty)'} lacks column(s) "
                        f"{', '.join(missing)} (expected {','.join(COLUMNS)})")
    prompts: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            video, clip, prompt = (row.get(c) for c in COLUMNS)
            if not video or not clip:
                raise FSRFError(f"data.prompts: {path}:{line}: empty video_id or clip_id")
            if prompt is None:
                raise FSRFError(f"data.prompts: {path}:{line}: the row has no prompt field")
            key = f"{video}{ID_SEPARATOR}{clip}"
            if not prompt.strip():
                raise FSRFError(f"data.prompts: {path}:{line}: empty prompt for clip {key!r}")
            if key in prompts:
                raise FSRFError(f"data.prompts: {path}:{line}: duplicate id {key!r} (first on line {lines[key]})")
            prompts[key], lines[key] = prompt, line
    except csv.Error as err:
        raise FSRFError(f"data.prompts: {path}:{reader.line_num}: not valid CSV ({err})") from None
    return prompts, lines


def fold(ids: torch.Tensor, *, length: int, buckets: int) -> torch.Tensor:
    """(B, P) loader ids -> (B, min(P, length)) ids in ``0 .. buckets - 1`` (0 stays padding)."""
    ids = ids[:, :length]
    return torch.where(ids > 0, (ids - 1) % (buckets - 1) + 1, torch.zeros_like(ids))


def encode_prompt(text: str, *, length: int = MAX_LEN, buckets: int = HASH_SPACE) -> list[int]:
    """Hashed word and word-pair ids of ``text`` (see the module docstring), P = ``length`` long."""
    words = _WORD.findall(text.lower())
    ids: list[int] = []
    for i, word in enumerate(words):
        ids.append(1 + zlib.crc32(word.encode()) % (buckets - 1))
        if i:
            ids.append(1 + zlib.crc32(f"{words[i - 1]} {word}".encode()) % (buckets - 1))
    ids = ids[:length]
    return ids + [0] * (length - len(ids))


def encode_prompt_tokens(texts: list[str], tokenizer: Any, *, length: int = MAX_LEN) -> torch.Tensor:
    """(N, ``length``) long: each text's token ids from ``tokenizer`` ([CLS] ... [SEP], truncated)
    plus 1, 0 at padding (so 0 means padding whatever the tokenizer's pad id)."""
    if not texts:
        return torch.zeros(0, length, dtype=torch.long)
    enc = tokenizer(texts, max_length=length, truncation=True, padding="max_length")
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    return torch.where(torch.tensor(enc["attention_mask"]) > 0, ids + 1, torch.zeros_like(ids))


def load_tokenizer(directory: str) -> Any:
    """The tokenizer saved in ``directory`` (``data.text_model``; local files only, never downloaded)."""
    from transformers import AutoTokenizer

    from fsrf.model._text import _quiet_loading

    try:
        with _quiet_loading():
            return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:  # noqa: BLE001  (any failure to load is a bad directory)
        raise FSRFError(f"data.text_model: {directory}: its tokenizer does not load for the prompts "
                        f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def encode_split(split: Split, prompts: Mapping[str, str], *, source: str, name: str,
                 tokenizer: Any = None) -> Split:
    """``split`` with ``extras["prompt"]`` (N, P) long from ``prompts`` joined on its ids: hashed
    ids, or with ``tokenizer`` its token ids + 1 (:func:`encode_prompt_tokens`).

    Raises:
        FSRFError: a sample without a prompt (naming the file, the split and the id).
    """
    rows = []
    for key in split.ids:
        if key not in prompts:
            raise FSRFError(f"data.prompts: {source}: no prompt for clip {key!r} (split {name!r}); the CSV needs "
                            "one row per clip of every split")
        rows.append(prompts[key])
    if tokenizer is not None:
        ids = encode_prompt_tokens(rows, tokenizer)
    else:
        ids = torch.tensor([encode_prompt(r) for r in rows], dtype=torch.long).reshape(len(split), MAX_LEN)
    return dataclasses.replace(split, extras={**split.extras, PROMPT: ids})


def attach_prompts(dataset: MultimodalDataset, path: str | Path, *, text_model: str | None = None) -> MultimodalDataset:
    """``dataset`` with every split's encoded prompts in ``extras["prompt"]`` (see :func:`encode_split`):
    tokenized by ``text_model``'s tokenizer when given (``data.text_input: tokens``), else hashed."""
    prompts, lines = _read_prompts(Path(path))
    if all(getattr(dataset, name) is not None for name in SPLITS):  # a row for no clip: a CSV of other data
        known = {key for name in SPLITS for key in getattr(dataset, name).ids}
        unknown = [key for key in prompts if key not in known]
        if unknown:
            raise FSRFError(f"data.prompts: {path}:{lines[unknown[0]]}: unknown clip {unknown[0]!r}, in no split of "
                            f"the dataset ({len(unknown)} such row(s)); is the CSV written for other data?")
    tokenizer = None if text_model is None else load_tokenizer(text_model)
    splits = {}
    for name in SPLITS:
        split = getattr(dataset, name)
        splits[name] = None if split is None else encode_split(split, prompts, source=str(path), name=name,
                                                               tokenizer=tokenizer)
    return dataclasses.replace(dataset, **splits)


CUES = ("furious", "negative", "uneasy", "neutral", "pleasant", "positive", "delighted")
"""The seven cue words, from most negative to most positive."""
_CUE_EDGES = np.array([-2.0, -1.2, -0.4, 0.4, 1.2, 2.0])
_FILLER = ("the speaker", "calmly", "talks", "about", "a film", "the scene", "gestures", "looks", "around",
           "slowly", "quickly", "the voice", "seems", "steady", "and", "then", "pauses", "briefly")


def synthetic_prompts(data: Mapping[str, Mapping[str, Any]], *, seed: int = 0,
                      cue_noise: float = 0.3) -> list[tuple[str, str, str, str]]:
    """Prompts with planted cues for a synthetic dataset from :func:`fsrf.data.make_recovery`.

    The clean score of a sample is the least-squares fit of the labels on its planted factors
    (``factor_shared`` and ``factor_<m>``; fitted on the train split), i.e. the label without its
    noise and rounding. Its cue word is the bin (:data:`CUES`, edges -2, -1.2, -0.4, 0.4, 1.2, 2)
    of ``score + cue_noise * e``; the word stands in the visual or the language part at random,
    among random filler words, in MMSLF's "1. Visual cues ... 2. Language cues ..." layout. The
    features render the shared factor through noisy nonlinear maps, so the cue tells more about
    the label than the features do: a teacher that reads it should beat a model without it.

    Data with frame cues (``cue_window`` in the splits, ``make_recovery(cue_frames=True)``) get
    instead a window phrase, "the feeling shows <early|middle|late> in the clip" (the
    :data:`fsrf.data._recovery.WINDOWS` word of the third of the audio / vision frames that holds
    the sentiment, exact; ``cue_noise`` is not read), in the visual or the language part at
    random among filler words: the prompt says where to look, not the label.

    Returns:
        ``(video_id, clip_id, mode, prompt)`` rows for every split, in split order.

    Raises:
        FSRFError: the data hold no planted factors (not the recovery generator).
    """
    keys = ["factor_shared", *(f"factor_{m}" for m in MODALITIES)]
    if any(k not in data["train"] for k in keys):
        raise FSRFError("synthetic prompts need the recovery generator's planted factors "
                        "(data.synthetic_kind: recovery)")
    rng = np.random.default_rng(seed)

    def design(split: Mapping[str, Any]) -> np.ndarray:
        x = np.concatenate([np.asarray(split[k], dtype=np.float64) for k in keys], axis=1)
        return np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)

    if "cue_window" in data["train"]:
        return _window_prompts(data, rng)
    coef, *_ = np.linalg.lstsq(design(data["train"]), np.asarray(data["train"]["regression_labels"], np.float64),
                               rcond=None)
    rows = []
    for name in SPLITS:
        split = data[name]
        score = design(split) @ coef
        cue = np.digitize(score + cue_noise * rng.standard_normal(score.shape[0]), _CUE_EDGES)
        rows += _rows(split, name, rng, visual=[f", the face looks {CUES[c]}" for c in cue],
                      language=[f", the words sound {CUES[c]}" for c in cue])
    return rows


def _rows(split: Mapping[str, Any], name: str, rng: np.random.Generator, *, visual: list[str],
          language: list[str]) -> list[tuple[str, str, str, str]]:
    """One split's prompt rows: each sample's cue phrase (``visual[i]`` or ``language[i]``, the
    side drawn at random) among random filler words, in MMSLF's two-part layout."""
    side = rng.integers(0, 2, size=len(visual))
    fill = rng.integers(0, len(_FILLER), size=(len(visual), 6))
    rows = []
    for i, key in enumerate(split["id"]):
        video, _, clip = str(key).rpartition(ID_SEPARATOR)
        words = [_FILLER[j] for j in fill[i]]
        seen, heard = " ".join(words[:3]), " ".join(words[3:])
        if side[i]:
            seen += visual[i]
        else:
            heard += language[i]
        rows.append((video, clip, name, f"1. Visual cues: {seen}. 2. Language cues: {heard}."))
    return rows


def _window_prompts(data: Mapping[str, Mapping[str, Any]], rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    """The frame-cue prompts of :func:`synthetic_prompts` (where the sentiment shows)."""
    from fsrf.data._recovery import WINDOWS

    rows = []
    for name in SPLITS:
        phrases = [f", the feeling shows {WINDOWS[int(w)]} in the clip" for w in np.asarray(data[name]["cue_window"])]
        rows += _rows(data[name], name, rng, visual=phrases, language=phrases)
    return rows


def prompts_csv(rows: Iterable[tuple[str, str, str, str]]) -> str:
    """The CSV text (header ``video_id,clip_id,mode,prompt``) of :func:`synthetic_prompts`' rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["video_id", "clip_id", "mode", PROMPT])
    writer.writerows(rows)
    return out.getvalue()
