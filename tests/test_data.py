"""The data layer: MMSA loading and validation, the restricted unpickler, synthetic data."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mmsa_files  # tests/ helper; pytest puts tests/ on sys.path (no __init__.py)
import numpy as np
import pytest
import torch

from fsrf._constants import MODALITIES, SPLITS
from fsrf._errors import FSRFError
from fsrf.data import (
    MultimodalDataset,
    load_mmsa,
    load_pickle_restricted,
    make_synthetic,
    save_mmsa,
    write_synthetic,
)

SMALL = {"n_train": 40, "n_valid": 10, "n_test": 12, "text_len": 8, "audio_len": 10}
MOSI_SHAPE = {"text_len": 50, "text_dim": 768, "audio_len": 375, "audio_dim": 5}
MOSI_SHAPE |= {"vision_len": 500, "vision_dim": 20}


def _load(tmp_path: Path, data: Any, name: str = "mosi") -> MultimodalDataset:
    return load_mmsa(mmsa_files.write(tmp_path / "MOSI.pkl", data), name=name)


def _error(tmp_path: Path, data: Any) -> str:
    with pytest.raises(FSRFError) as info:
        _load(tmp_path, data)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the MMSA layouts -------------------------------------------------------------


def test_mosi_unaligned_loads_with_shapes_masks_and_order(tmp_path: Path) -> None:
    raw = mmsa_files.mosi_unaligned()
    data = _load(tmp_path, raw)
    assert data.name == "mosi" and data.source.endswith("MOSI.pkl")
    for split in SPLITS:
        part, src = data.split(split), raw[split]
        n = mmsa_files.SPLIT_SIZES[split]
        assert list(part.features) == list(MODALITIES) == list(part.valid)
        assert part.dims() == mmsa_files.MOSI_DIMS
        assert part.lengths() == {"text": 8, "audio": 12, "vision": 10}
        for m in MODALITIES:
            x = part.features[m]
            assert x.dtype == torch.float32 and x.is_contiguous() and x.shape[0] == n
            assert part.valid[m].dtype == torch.bool and part.valid[m].shape == x.shape[:2]
            np.testing.assert_array_equal(x.numpy(), src[m])
        # text positions come from the attention mask (padding features are non-zero)
        np.testing.assert_array_equal(part.valid["text"].numpy(), src["text_bert"][:, 1] > 0)
        assert part.valid["text"].sum(1).tolist() == mmsa_files.text_lengths(src).tolist()
        for m in ("audio", "vision"):
            assert part.valid[m].sum(1).tolist() == src[f"{m}_lengths"].tolist()
            assert part.valid[m][:, 0].all()  # valid steps come first
        assert part.labels.dtype == torch.float32
        np.testing.assert_array_equal(part.labels.numpy(), src["regression_labels"])
        assert part.ids == tuple(src["id"].tolist()) and all(isinstance(i, str) for i in part.ids)


def test_mosi_aligned_has_every_step_valid(tmp_path: Path) -> None:
    data = _load(tmp_path, mmsa_files.mosi_aligned())
    assert data.test.lengths() == {"text": 8, "audio": 8, "vision": 8}
    assert data.test.dims() == mmsa_files.MOSI_DIMS
    assert data.test.valid["audio"].all() and data.test.valid["vision"].all()
    assert not data.test.valid["text"].all()


def test_sims_unaligned_loads(tmp_path: Path) -> None:
    raw = mmsa_files.sims_unaligned()
    data = _load(tmp_path, raw, name="sims")
    assert data.name == "sims" and data.valid.dims() == mmsa_files.SIMS_DIMS
    labels = data.train.labels.numpy()
    assert np.all(np.abs(labels) <= 1) and np.allclose(labels * 5, np.round(labels * 5), atol=1e-5)
    steps = data.valid.valid["vision"].sum(1).tolist()
    assert steps == raw["valid"]["vision_lengths"].tolist()


def test_text_valid_falls_back_to_non_zero_rows(tmp_path: Path) -> None:
    raw = mmsa_files.mosi_unaligned()
    for split in SPLITS:
        mask = raw[split].pop("text_bert")[:, 1] > 0
        raw[split]["text"][~mask] = 0.0
    data = _load(tmp_path, raw)
    expected = np.any(raw["train"]["text"] != 0, axis=-1)
    np.testing.assert_array_equal(data.train.valid["text"].numpy(), expected)


def test_lengths_given_as_lists_or_floats(tmp_path: Path) -> None:
    raw = mmsa_files.mosi_unaligned()
    expected = raw["train"]["audio_lengths"].tolist()
    raw["train"]["audio_lengths"] = list(expected)
    raw["train"]["vision_lengths"] = raw["train"]["vision_lengths"].astype(np.float64)
    data = _load(tmp_path, raw)
    assert data.train.valid["audio"].sum(1).tolist() == expected


def test_other_dtypes_become_float32(tmp_path: Path) -> None:
    raw = mmsa_files.mosi_unaligned()
    raw["train"]["audio"] = raw["train"]["audio"].astype(np.float64)
    raw["train"]["regression_labels"] = raw["train"]["regression_labels"].astype(np.float64)
    data = _load(tmp_path, raw)
    assert data.train.features["audio"].dtype == torch.float32
    assert data.train.labels.dtype == torch.float32


def test_non_finite_features_are_zeroed_with_one_warning(tmp_path: Path) -> None:
    raw = mmsa_files.mosi_unaligned()
    raw["train"]["audio"][0, :3, 1] = -np.inf
    raw["test"]["vision"][1, 0, :2] = [np.nan, np.inf]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = _load(tmp_path, raw)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "set 5 non-finite feature values to 0 (train/audio: 3, test/vision: 2)" in message
    assert data.train.features["audio"][0, :3, 1].eq(0).all()
    assert data.test.features["vision"][1, 0, :2].eq(0).all()
    assert all(torch.isfinite(data.split(s).features[m]).all() for s in SPLITS for m in MODALITIES)


def test_big_arrays_are_scanned_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fsrf.data._mmsa._CHUNK_ELEMENTS", 100)  # a few samples per chunk
    raw = mmsa_files.mosi_unaligned()
    raw["train"]["audio"][[0, 3, 5], 1, 2] = -np.inf
    mask = raw["train"].pop("text_bert")[:, 1] > 0
    raw["train"]["text"][~mask] = 0.0
    with pytest.warns(RuntimeWarning, match=r"set 3 non-finite .* \(train/audio: 3\)"):
        data = _load(tmp_path, raw)
    assert torch.isfinite(data.train.features["audio"]).all()
    np.testing.assert_array_equal(data.train.valid["text"].numpy(), mask)


def test_clean_file_loads_without_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _load(tmp_path, mmsa_files.mosi_unaligned())


# --- bad files ----------------------------------------------------------------------


def _set(split: str, key: str, value: Callable[[dict[str, Any]], Any]) -> Callable[[Any], Any]:
    def edit(data: Any) -> Any:
        data[split][key] = value(data[split])
        return data

    return edit


def _drop(split: str, key: str | None = None) -> Callable[[Any], Any]:
    def edit(data: Any) -> Any:
        del (data if key is None else data[split])[split if key is None else key]
        return data

    return edit


def _nan_labels(part: dict[str, Any]) -> np.ndarray:
    labels = part["regression_labels"].copy()
    labels[:2] = [np.nan, np.inf]
    return labels


BAD_FILES = {
    "missing split": (_drop("valid"), "missing split 'valid'"),
    "missing key": (_drop("train", "audio"), "split 'train' is missing key 'audio'"),
    "missing labels": (_drop("test", "regression_labels"), "missing key 'regression_labels'"),
    "split not a dict": (lambda d: {**d, "test": [1, 2]}, "split 'test' holds a list"),
    "not a dict": (lambda d: [d["train"]], "holds a list, expected a dict"),
    "mismatched counts": (
        _set("valid", "vision", lambda s: s["vision"][:3]),
        "split 'valid' key 'vision' has 3 samples but key 'text' has 4",
    ),
    "mismatched labels": (
        _set("train", "regression_labels", lambda s: s["regression_labels"][:5]),
        "split 'train' key 'regression_labels' has 5 samples but key 'text' has 6",
    ),
    "mismatched ids": (_set("test", "id", lambda s: s["id"][:2]), "key 'id' has 2 samples"),
    "wrong rank": (
        _set("valid", "audio", lambda s: s["audio"].reshape(4, -1)),
        "split 'valid' key 'audio' has rank 2, expected 3 (N, T, D)",
    ),
    "label rank": (
        _set("train", "regression_labels", lambda s: s["regression_labels"][:, None]),
        "key 'regression_labels' has rank 2, expected 1 (N,)",
    ),
    "text_bert length": (
        _set("train", "text_bert", lambda s: s["text_bert"][:, :, :5]),
        "key 'text_bert' has shape (6, 3, 5), expected (N, 3, 8)",
    ),
    "NaN labels": (
        _set("test", "regression_labels", _nan_labels),
        "split 'test' key 'regression_labels' has 2 NaN or infinite values",
    ),
    "lengths above T": (
        _set("train", "audio_lengths", lambda s: s["audio_lengths"] + 13),
        "split 'train' key 'audio_lengths' has value",
    ),
    "negative length": (
        _set("valid", "vision_lengths", lambda s: -s["vision_lengths"]),
        "key 'vision_lengths' has value -",
    ),
    "fractional length": (
        _set("valid", "vision_lengths", lambda s: s["vision_lengths"] - 0.5),
        "expected integers in [0, 10]",
    ),
    "dims differ": (
        _set("test", "vision", lambda s: s["vision"][:, :, :19]),
        "split 'test' key 'vision' has feature dim 19, expected 20 as in split 'train'",
    ),
    "string features": (
        _set("train", "audio", lambda s: s["audio"].astype(str)),
        "split 'train' key 'audio' has dtype <U",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_names_the_key(tmp_path: Path, case: str) -> None:
    edit, expected = BAD_FILES[case]
    message = _error(tmp_path, edit(mmsa_files.mosi_unaligned()))
    assert expected in message
    assert message.startswith(str(tmp_path / "MOSI.pkl"))


def test_length_error_names_the_value(tmp_path: Path) -> None:
    raw = mmsa_files.mosi_unaligned()
    raw["train"]["audio_lengths"][2] = 13
    message = _error(tmp_path, raw)
    assert "key 'audio_lengths' has value 13, expected integers in [0, 12]" in message


@pytest.mark.parametrize("keep", [0, 10, 200])
def test_truncated_or_corrupt_file(tmp_path: Path, keep: int) -> None:
    path = mmsa_files.write(tmp_path / "MOSI.pkl", mmsa_files.mosi_unaligned())
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(FSRFError, match="truncated or corrupt pickle") as info:
        load_mmsa(path, name="mosi")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "MOSI.pkl"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(FSRFError, match="truncated or corrupt pickle"):
        load_mmsa(path, name="mosi")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FSRFError, match=r"MOSI\.pkl: no such file"):
        load_mmsa(tmp_path / "MOSI.pkl", name="mosi")


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(FSRFError, match="dataset name 'imdb' is unknown"):
        _load(tmp_path, mmsa_files.mosi_unaligned(), name="imdb")


# --- the restricted unpickler ---------------------------------------------------------


class _Call:
    """Unpickles as ``func(*args)``: how a hostile pickle runs code."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def _hostile(marker: Path) -> dict[str, Any]:
    return {
        "system": _Call(os.system, f"touch {marker}"),
        "eval": _Call(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "exec": _Call(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "numpy rng": np.random.default_rng(0),
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("kind", ["system", "eval", "exec", "numpy rng"])
def test_malicious_pickle_is_refused(tmp_path: Path, protocol: int, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = _hostile(marker)[kind]
    data = mmsa_files.mosi_unaligned()
    data["valid"]["annotations"] = payload  # hidden deep inside an otherwise good file
    path = mmsa_files.write(tmp_path / "MOSI.pkl", data, protocol=protocol)
    with pytest.raises(FSRFError, match="refusing to unpickle") as info:
        load_mmsa(path, name="mosi")
    message = str(info.value)
    assert message.startswith(f"{path}: refusing to unpickle '")
    assert "MMSA files hold only dicts, lists, strings and numpy arrays" in message
    named = {"system": ".system'", "eval": ".eval'", "exec": ".exec'"}  # __builtin__ if proto < 3
    assert named.get(kind, "'numpy.random.") in message
    assert not marker.exists()


def test_hostile_payloads_are_live(tmp_path: Path) -> None:
    """Control: the payloads above do run under an unrestricted loader."""
    marker = tmp_path / "pwned"
    for kind in ("system", "eval", "exec"):
        pickle.loads(pickle.dumps(_hostile(marker)[kind]))
        assert marker.exists()
        marker.unlink()


def test_numpy_1_paths_load(tmp_path: Path) -> None:
    """Files written by numpy < 2 name ``numpy.core.*`` instead of ``numpy._core.*``."""
    value = {"x": np.arange(4.0).reshape(2, 2), "s": np.float32(1.5), "id": np.array(["a"])}
    blob = pickle.dumps(value, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in blob
    path = tmp_path / "old.pkl"
    path.write_bytes(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DeprecationWarning from numpy's shim
        loaded = load_pickle_restricted(path)
    np.testing.assert_array_equal(loaded["x"], value["x"])
    assert loaded["s"] == np.float32(1.5) and loaded["id"].tolist() == ["a"]


def test_restricted_unpickler_reads_numpy_and_ordered_dicts(tmp_path: Path) -> None:
    value = {
        "floats": np.arange(6, dtype=np.float32).reshape(2, 3),
        "objects": np.array(["a$_$1", "b$_$2"], dtype=object),
        "unicode": np.array(["x", "yz"]),
        "scalar": np.float64(2.5),
        "ordered": collections.OrderedDict(a=[1, 2.0, "s", (None, True)]),
        "bytes": b"\x00\xff",
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = mmsa_files.write(tmp_path / f"p{protocol}.pkl", value, protocol=protocol)
        loaded = load_pickle_restricted(path)
        assert isinstance(loaded, dict) and loaded.keys() == value.keys()
        for key in ("floats", "objects", "unicode"):
            np.testing.assert_array_equal(loaded[key], value[key])
            assert loaded[key].dtype == value[key].dtype
        assert loaded["scalar"] == 2.5 and loaded["bytes"] == b"\x00\xff"
        assert loaded["ordered"] == value["ordered"]


def test_package_never_calls_the_unrestricted_loader() -> None:
    package = Path(__file__).resolve().parents[1] / "fsrf"
    offenders = [
        str(path)
        for path in package.rglob("*.py")
        if "pickle.load(" in (text := path.read_text()) or "pickle.loads(" in text
    ]
    assert offenders == []


# --- save_mmsa ----------------------------------------------------------------------


def test_save_mmsa_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "data.pkl"
    save_mmsa(path, {"train": {"x": np.ones(3)}})
    save_mmsa(path, {"train": {"x": np.zeros(3)}})
    assert load_pickle_restricted(path)["train"]["x"].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_mmsa(path, {"train": {"x": lambda: None}})  # fails mid-write
    assert load_pickle_restricted(path)["train"]["x"].tolist() == [0.0, 0.0, 0.0]
    assert [p.name for p in path.parent.iterdir()] == ["data.pkl"]


# --- synthetic data -----------------------------------------------------------------


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for split in SPLITS:
        assert a[split].keys() == b[split].keys()
        for key, value in a[split].items():
            assert value.dtype == b[split][key].dtype
            np.testing.assert_array_equal(value, b[split][key])


def test_synthetic_is_deterministic_per_seed() -> None:
    first = make_synthetic(seed=3, **SMALL)
    _assert_same(first, make_synthetic(seed=3, **SMALL))
    other = make_synthetic(seed=4, **SMALL)
    for key in ("text", "audio", "vision", "regression_labels", "audio_lengths"):
        assert not np.array_equal(first["train"][key], other["train"][key])


def test_synthetic_has_the_mmsa_unaligned_layout() -> None:
    data = make_synthetic(seed=0, **SMALL)
    keys = {"raw_text", "text", "text_bert", "audio", "vision", "audio_lengths", "vision_lengths"}
    keys |= {"id", "annotations", "classification_labels", "regression_labels"}
    assert set(data) == set(SPLITS)
    ids = [i for s in SPLITS for i in data[s]["id"]]
    assert len(set(ids)) == len(ids) and ids[9] == "synvid1$_$1"
    for split in SPLITS:
        part, n = data[split], SMALL[f"n_{split}"]
        assert set(part) == keys
        assert part["text"].shape == (n, 8, 32) and part["audio"].shape == (n, 10, 12)
        assert part["vision"].shape == (n, 40, 16) and part["text_bert"].shape == (n, 3, 8)
        assert part["text"].dtype == part["text_bert"].dtype == np.float32
        assert part["regression_labels"].shape == (n,) and part["audio_lengths"].shape == (n,)
        bert = part["text_bert"]
        length = bert[:, 1].sum(1).astype(int)
        assert np.all(bert[:, 0, 0] == 101) and np.all(bert[np.arange(n), 0, length - 1] == 102)
        assert np.all(bert[:, 2] == 0) and np.all((bert[:, 0] != 0) == (bert[:, 1] == 1))
        assert np.all(length >= 4) and np.all(np.diff(bert[:, 1], axis=1) <= 0)
        assert all(isinstance(s, str) for s in [*part["raw_text"], *part["annotations"]])


def test_synthetic_padding_is_exactly_zero_and_values_finite() -> None:
    data = make_synthetic(seed=1, **SMALL)
    for part in data.values():
        lengths = {"text": part["text_bert"][:, 1].sum(1)}
        lengths |= {m: part[f"{m}_lengths"] for m in ("audio", "vision")}
        for m in MODALITIES:
            x = part[m]
            pad = np.arange(x.shape[1])[None, :] >= lengths[m][:, None]
            assert np.isfinite(x).all()
            assert np.all(x[pad] == 0) and not np.signbit(x[pad]).any()
            assert np.all(np.any(x[~pad] != 0, axis=-1))
            assert lengths[m].min() >= x.shape[1] // 2


def test_synthetic_labels_are_on_mosi_scale() -> None:
    labels = make_synthetic(seed=2)["train"]["regression_labels"]
    assert labels.min() >= -3 and labels.max() <= 3
    np.testing.assert_allclose(labels * 3, np.round(labels * 3), atol=1e-5)
    assert 0.02 < np.mean(labels == 0) < 0.3 and (labels > 0).any() and (labels < 0).any()


def test_synthetic_round_trips_through_the_loader(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path / "synthetic.pkl", seed=5, **SMALL)
    raw = make_synthetic(seed=5, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_mmsa(path, name="synthetic")
    for split in SPLITS:
        part, src = data.split(split), raw[split]
        for m in MODALITIES:
            np.testing.assert_array_equal(part.features[m].numpy(), src[m])
        np.testing.assert_array_equal(part.valid["text"].numpy(), src["text_bert"][:, 1] == 1)
        assert part.valid["audio"].sum(1).tolist() == src["audio_lengths"].tolist()
        np.testing.assert_array_equal(part.labels.numpy(), src["regression_labels"])
        assert part.ids == tuple(src["id"])


def _pooled(part: dict[str, Any], m: str, keep: float, rng: np.random.Generator) -> np.ndarray:
    x = part[m]
    valid = np.arange(x.shape[1])[None, :] < (
        part["text_bert"][:, 1].sum(1) if m == "text" else part[f"{m}_lengths"]
    )[:, None]
    valid &= rng.random(valid.shape) < keep
    mean = (x * valid[..., None]).sum(1) / np.maximum(valid.sum(1, keepdims=True), 1)
    return np.concatenate([mean, np.ones((len(x), 1))], axis=1)


def _probe(data: dict[str, Any], m: str, keep: float = 1.0) -> float:
    """Test correlation of a least-squares fit of the label on frame-averaged features."""
    rng = np.random.default_rng(0)
    train, test = data["train"], data["test"]
    weights = np.linalg.lstsq(_pooled(train, m, 1.0, rng), train["regression_labels"])[0]
    prediction = _pooled(test, m, keep, rng) @ weights
    return float(np.corrcoef(prediction, test["regression_labels"])[0, 1])


def test_synthetic_frame_averages_predict_the_label() -> None:
    data = make_synthetic(seed=0)
    assert _probe(data, "text") > 0.5
    assert _probe(data, "audio") > 0.3 and _probe(data, "vision") > 0.3
    assert _probe(data, "text", keep=0.1) < _probe(data, "text") - 0.15  # frames matter


def test_synthetic_at_mosi_shape_is_fast() -> None:
    start = time.perf_counter()
    data = make_synthetic(seed=0, n_train=32, n_valid=8, n_test=8, **MOSI_SHAPE)
    assert time.perf_counter() - start < 5.0
    assert data["train"]["text"].shape == (32, 50, 768)
    assert data["train"]["text_bert"].shape == (32, 3, 50)
    assert data["valid"]["audio"].shape == (8, 375, 5)
    assert data["test"]["vision"].shape == (8, 500, 20)


@pytest.mark.parametrize(
    "kwargs", [{"n_train": 0}, {"text_len": 1}, {"audio_dim": -2}, {"vision_len": 2.5}]
)
def test_synthetic_rejects_bad_sizes(kwargs: dict[str, Any]) -> None:
    with pytest.raises(FSRFError, match=f"make_synthetic: {next(iter(kwargs))}="):
        make_synthetic(seed=0, **kwargs)
