"""Missing-modality simulation: the simulator contract, the two protocols, and the fixed eval masks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from fsrf._config import SIMULATOR_NAMES
from fsrf._constants import COMPLETE_PATTERN, MISSING_PATTERNS, MODALITIES
from fsrf._errors import FSRFError
from fsrf.missing import (
    SIMULATORS,
    BaseMissingness,
    EvalMaskCache,
    MixedDrop,
    ModalityDrop,
    RandomDrop,
    apply_keep,
    build_simulator,
    eval_generator_seed,
    eval_keep,
    pattern_keep,
    training_rates,
)

CLASSES = [RandomDrop, ModalityDrop, MixedDrop]
LENGTHS = {"text": 12, "audio": 20, "vision": 20}  # audio and vision share T on purpose (LNLN's MOSEI bug)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _valid(b: int, *, seed: int = 0, min_len: int = 1, same_av: bool = True) -> dict[str, torch.Tensor]:
    """Left-aligned validity masks with per-sample lengths in [min_len, T_m]."""
    gen = _gen(seed)
    out = {}
    for m, t in LENGTHS.items():
        lengths = torch.randint(min_len, t + 1, (b,), generator=gen)
        out[m] = torch.arange(t).expand(b, t) < lengths[:, None]
    if same_av:
        out["vision"] = out["audio"].clone()
    return out


def _full(b: int, t: int = 10) -> dict[str, torch.Tensor]:
    return {m: torch.ones(b, t, dtype=torch.bool) for m in MODALITIES}


def _rates(b: int, rate: float) -> torch.Tensor:
    return torch.full((b, 3), rate)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[m], b[m]) for m in a)


def _dropped_share(keep: torch.Tensor, valid: torch.Tensor) -> float:
    return float((~keep & valid).sum() / valid.sum())


# --- the contract, over every simulator class -------------------------------------------------------


def test_registry_matches_config_and_classes() -> None:
    assert tuple(SIMULATORS) == SIMULATOR_NAMES
    assert list(SIMULATORS.values()) == CLASSES
    for name, cls in SIMULATORS.items():
        assert cls.name == name and issubclass(cls, BaseMissingness)
        assert type(build_simulator(name)) is cls
    assert build_simulator("mixed", modality_share=0.25).modality_share == 0.25
    with pytest.raises(TypeError):
        BaseMissingness()  # type: ignore[abstract]


@pytest.mark.parametrize("cls", CLASSES)
def test_shapes_dtypes_order_and_padding(cls: type[BaseMissingness]) -> None:
    valid = _valid(64, min_len=0)
    rates = torch.rand(64, 3, generator=_gen(1))
    rates[:8] = 1.0
    keep = cls().sample(valid, rates, _gen())
    assert list(keep) == list(MODALITIES)
    for m in MODALITIES:
        assert keep[m].dtype == torch.bool and keep[m].shape == valid[m].shape and keep[m].device == valid[m].device
        assert bool(keep[m][~valid[m]].all()), f"{m}: padding must stay True"


@pytest.mark.parametrize("cls", CLASSES)
def test_rate_zero_keeps_everything(cls: type[BaseMissingness]) -> None:
    keep = cls().sample(_valid(50), _rates(50, 0.0), _gen())
    assert all(bool(k.all()) for k in keep.values())


@pytest.mark.parametrize("cls", CLASSES)
def test_determinism_and_fresh_views(cls: type[BaseMissingness]) -> None:
    valid, rates, sim = _valid(32), _rates(32, 0.5), cls()
    gen = _gen(7)
    state = gen.get_state()
    first, second = sim.sample(valid, rates, gen), sim.sample(valid, rates, gen)
    assert not _equal(first, second), "two consecutive views from one generator must differ"
    gen.set_state(state)
    assert _equal(sim.sample(valid, rates, gen), first)
    assert _equal(cls().sample(valid, rates, _gen(7)), first)


@pytest.mark.parametrize("cls", CLASSES)
def test_per_sample_rates_are_respected(cls: type[BaseMissingness]) -> None:
    valid = _full(40)
    rates = torch.zeros(40, 3)
    rates[20:] = 1.0
    keep = cls().sample(valid, rates, _gen())
    assert all(bool(keep[m][:20].all()) for m in MODALITIES)
    lost = sum((~keep[m][20:]).sum(1) for m in MODALITIES)
    assert bool((lost >= 10).all()), "rate 1 drops at least two modalities' worth of frames of every sample"


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_inputs_raise_fsrf_error(cls: type[BaseMissingness]) -> None:
    sim, valid, gen = cls(), _full(4), _gen()
    cases: list[tuple[Any, Any, Any, str]] = [
        (valid, torch.full((4, 3), 1.5), gen, "1.5"),
        (valid, torch.full((4, 3), -0.2), gen, "-0.2"),
        (valid, torch.full((4, 3), math.nan), gen, "nan"),
        (valid, torch.zeros(4, 2), gen, "(4, 2)"),
        (valid, torch.zeros(4, 3, dtype=torch.long), gen, "torch.int64"),
        (valid, [[0.1] * 3] * 4, gen, "list"),
        (valid, torch.zeros(4, 3), None, "NoneType"),
        ({"text": valid["text"], "audio": valid["audio"]}, torch.zeros(4, 3), gen, "'audio', 'text'"),
        ({**valid, "vision": valid["vision"].float()}, torch.zeros(4, 3), gen, "torch.float32"),
        ({**valid, "audio": valid["audio"][:3]}, torch.zeros(4, 3), gen, "batch size 3"),
    ]
    for v, r, g, needle in cases:
        with pytest.raises(FSRFError) as info:
            sim.sample(v, r, g)
        assert needle in str(info.value) and "\n" not in str(info.value)


# --- RandomDrop (LNLN) ------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_random_drop_share_matches_rate(rate: float) -> None:
    valid = _valid(2000, seed=3)
    keep = RandomDrop().sample(valid, _rates(2000, rate), _gen(4))
    for m in ("audio", "vision"):
        assert _dropped_share(keep[m], valid[m]) == pytest.approx(rate, abs=0.01)
    inner = valid["text"] & ~_text_ends(valid["text"])
    assert _dropped_share(keep["text"], inner) == pytest.approx(rate, abs=0.01)


def _text_ends(v: torch.Tensor) -> torch.Tensor:
    ends = torch.zeros_like(v)
    for b in range(v.shape[0]):  # a deliberately naive reference
        idx = v[b].nonzero().flatten()
        if len(idx):
            ends[b, idx[0]] = ends[b, idx[-1]] = True
    return ends


def test_random_drop_at_rate_one_keeps_only_cls_and_sep() -> None:
    valid = _valid(64, min_len=0)
    valid["text"][:, 0] &= torch.arange(64) % 2 == 0  # some rows start later: ends are the first/last *valid* ones
    valid["text"][5] = torch.tensor([False, True, False, True, True, False] + [False] * 6)
    keep = RandomDrop().sample(valid, _rates(64, 1.0), _gen())
    assert torch.equal(~keep["text"] & valid["text"], valid["text"] & ~_text_ends(valid["text"]))
    assert torch.equal(keep["text"], ~valid["text"] | _text_ends(valid["text"]))
    for m in ("audio", "vision"):
        assert torch.equal(keep[m], ~valid[m]), f"{m}: rate 1 drops every valid frame"


def test_random_drop_modalities_draw_independently() -> None:
    valid = _valid(16)
    assert torch.equal(valid["audio"], valid["vision"])
    keep = RandomDrop().sample(valid, _rates(16, 0.5), _gen())
    assert not torch.equal(keep["audio"], keep["vision"])


# --- ModalityDrop (CorrKD/HRLF) ---------------------------------------------------------------------


def _whole_dropped(keep: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 3) True where a modality lost every valid position; asserts no partial drops."""
    cols = []
    for m in MODALITIES:
        lost = (~keep[m] & valid[m]).sum(1)
        assert bool(((lost == 0) | (lost == valid[m].sum(1))).all()), f"{m}: partial drop"
        cols.append(lost > 0)
    return torch.stack(cols, 1)


@pytest.mark.parametrize("rate", [0.3, 0.8, 1.0])
def test_modality_drop_is_whole_and_never_drops_all(rate: float) -> None:
    valid = _valid(20000, seed=5)
    dropped = _whole_dropped(ModalityDrop().sample(valid, _rates(20000, rate), _gen(6)), valid)
    assert not bool(dropped.all(1).any())
    expected = rate - rate**3 / 3  # the all-dropped case keeps one of three uniformly
    for i in range(3):
        assert float(dropped[:, i].float().mean()) == pytest.approx(expected, abs=0.015)


def test_modality_drop_rescue_is_uniform_and_independent() -> None:
    valid = _valid(9000)
    dropped = _whole_dropped(ModalityDrop().sample(valid, _rates(9000, 1.0), _gen()), valid)
    assert torch.equal(dropped.sum(1), torch.full((9000,), 2))
    assert (~dropped).float().mean(0).tolist() == pytest.approx([1 / 3] * 3, abs=0.02)


# --- MixedDrop ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.0, 0.3, 0.7, 1.0])
def test_mixed_drop_share_of_whole_modality_samples(share: float) -> None:
    valid = _full(10000)
    keep = MixedDrop(modality_share=share).sample(valid, _rates(10000, 1.0), _gen(2))
    # at rate 1: a whole-modality sample keeps one modality entirely; a token-level one keeps
    # only text's CLS/SEP and nothing of audio or vision
    whole = torch.stack([keep[m].all(1) for m in MODALITIES], 1).any(1)
    token = (keep["text"].sum(1) == 2) & ~keep["audio"].any(1) & ~keep["vision"].any(1)
    assert torch.equal(whole, ~token)
    assert float(whole.float().mean()) == pytest.approx(share, abs=0.02)


@pytest.mark.parametrize("bad", [1.5, -0.1, math.nan, "0.5", True, None])
def test_mixed_drop_rejects_bad_share(bad: object) -> None:
    with pytest.raises(FSRFError, match="modality_share") as info:
        MixedDrop(modality_share=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)
    with pytest.raises(FSRFError, match="modality_share"):
        build_simulator("mixed", modality_share=bad)


def test_build_simulator_errors() -> None:
    with pytest.raises(FSRFError, match="'dropout' is not one of random, modality, mixed"):
        build_simulator("dropout")
    with pytest.raises(FSRFError, match="'random'"):
        build_simulator("random", modality_share=0.5)


# --- training rates -----------------------------------------------------------------------------------


def test_training_rates_bounds_and_complete_share() -> None:
    rates = training_rates(20000, max_rate=0.6, complete_share=0.3, generator=_gen())
    assert rates.shape == (20000, 3) and rates.dtype == torch.float32
    assert float(rates.min()) >= 0.0 and float(rates.max()) <= 0.6
    complete = (rates == 0).all(1)
    assert float(complete.float().mean()) == pytest.approx(0.3, abs=0.015)
    assert rates[~complete].mean(0).tolist() == pytest.approx([0.3] * 3, abs=0.01)  # U(0, 0.6) means
    assert not torch.equal(rates[:, 1], rates[:, 2])
    assert bool((training_rates(50, max_rate=0.0, complete_share=0.0, generator=_gen()) == 0).all())
    assert not bool((training_rates(50, max_rate=0.5, complete_share=1.0, generator=_gen()) != 0).any())
    assert torch.equal(
        training_rates(8, max_rate=1.0, complete_share=0.5, generator=_gen(9)),
        training_rates(8, max_rate=1.0, complete_share=0.5, generator=_gen(9)),
    )


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"batch_size": 0}, "batch_size: 0"),
        ({"batch_size": 2.5}, "batch_size: 2.5"),
        ({"max_rate": 1.5}, "max_rate: 1.5"),
        ({"complete_share": -0.1}, "complete_share: -0.1"),
        ({"generator": None}, "generator"),
    ],
)
def test_training_rates_errors(kwargs: dict[str, Any], needle: str) -> None:
    args: dict[str, Any] = {"batch_size": 4, "max_rate": 0.5, "complete_share": 0.5, "generator": _gen(), **kwargs}
    with pytest.raises(FSRFError, match=needle.replace(".", r"\.")):
        training_rates(args.pop("batch_size"), **args)


# --- whole-modality patterns and applying masks -------------------------------------------------------


@pytest.mark.parametrize("present", [*MISSING_PATTERNS, COMPLETE_PATTERN])
def test_pattern_keep(present: tuple[str, ...]) -> None:
    valid = _valid(30, min_len=0)
    keep = pattern_keep(valid, present)
    assert list(keep) == list(MODALITIES)
    for m in MODALITIES:
        assert torch.equal(keep[m], torch.ones_like(valid[m]) if m in present else ~valid[m])


@pytest.mark.parametrize(("present", "needle"), [((), "empty"), (("text", "depth"), "'depth'"), ("text", "'text'")])
def test_pattern_keep_errors(present: Any, needle: str) -> None:
    with pytest.raises(FSRFError, match=needle):
        pattern_keep(_valid(3), present)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_apply_keep_zeroes_exactly_the_dropped_frames(dtype: torch.dtype) -> None:
    valid = _valid(16)
    feats = {m: torch.randn(16, t, 4, generator=_gen(i)).to(dtype) + 5 for i, (m, t) in enumerate(LENGTHS.items())}
    feats["audio"][0, 0, 0] = math.inf
    before = {m: x.clone() for m, x in feats.items()}
    keep = RandomDrop().sample(valid, _rates(16, 0.5), _gen())
    keep["audio"][0, 0] = False
    out = apply_keep(feats, keep)
    for m in MODALITIES:
        assert out[m].dtype == dtype and torch.equal(feats[m], before[m])
        assert bool((out[m][~keep[m]] == 0).all())
        assert torch.equal(out[m][keep[m]], feats[m][keep[m]])
    with pytest.raises(FSRFError, match="keep"):
        apply_keep(feats, {"text": keep["text"]})
    with pytest.raises(FSRFError, match=r"keep\['audio'\]"):
        apply_keep(feats, {**keep, "audio": keep["audio"][:, :5]})


# --- fixed evaluation masks ---------------------------------------------------------------------------


def test_eval_keep_is_a_pure_function_of_seed_rate_split() -> None:
    valid = _valid(300)
    base = eval_keep(valid, rate=0.5, seed=1111, split="test")
    assert _equal(base, eval_keep({m: v.clone() for m, v in valid.items()}, rate=0.5, seed=1111, split="test"))
    for other in [{"rate": 0.5, "seed": 1111, "split": "valid"}, {"rate": 0.4, "seed": 1111, "split": "test"},
                  {"rate": 0.5, "seed": 1112, "split": "test"}]:
        assert not _equal(base, eval_keep(valid, **other))  # type: ignore[arg-type]
    assert not torch.equal(base["audio"], base["vision"])
    assert _dropped_share(base["audio"], valid["audio"]) == pytest.approx(0.5, abs=0.03)
    assert all(bool(k.all()) for k in eval_keep(valid, rate=0.0, seed=1, split="test").values())
    whole = eval_keep(valid, rate=0.5, seed=1111, split="test", simulator=ModalityDrop())
    _whole_dropped(whole, valid)


def test_eval_seed_is_stable_across_processes() -> None:
    # pinned: Python's salted hash() would change it every process; changing the derivation changes
    # every published evaluation mask
    assert eval_generator_seed(1111, 0.5, "test") == eval_generator_seed(1111, 0.50000001, "test")
    assert eval_generator_seed(1111, 0.5, "test") == 8652275324489305520


def test_eval_keep_errors() -> None:
    valid = _valid(4)
    for kwargs, needle in [
        ({"rate": 1.2}, "rate: 1.2"),
        ({"seed": "1111"}, "seed: '1111'"),
        ({"split": 3}, "split: 3"),
        ({"simulator": "random"}, "simulator: 'random'"),
    ]:
        args: dict[str, Any] = {"rate": 0.5, "seed": 1, "split": "test", **kwargs}
        with pytest.raises(FSRFError, match=needle):
            eval_keep(valid, **args)


def test_eval_mask_cache_slices_the_fixed_masks() -> None:
    valid = _valid(100)
    cache = EvalMaskCache(valid, rates=(0.0, 0.3, 0.3, 0.9), seed=1111, split="valid")
    assert cache.rates == (0.0, 0.3, 0.9) and 0.9 in cache and 0.5 not in cache
    index = torch.tensor([5, 0, 99, 5])
    state = torch.random.get_rng_state()
    for rate in cache.rates:
        full = eval_keep(valid, rate=rate, seed=1111, split="valid")
        assert _equal(cache.keep(rate), full)
        assert _equal(cache.keep(rate, index), {m: k[index] for m, k in full.items()})
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(FSRFError, match="0.5 is not cached"):
        cache.keep(0.5)
    with pytest.raises(FSRFError, match="rates"):
        EvalMaskCache(valid, rates=(), seed=1, split="valid")


# --- no global RNG ------------------------------------------------------------------------------------


def _calls() -> list[tuple[str, Callable[[], object]]]:
    valid, rates = _valid(20), _rates(20, 0.5)
    calls: list[tuple[str, Callable[[], object]]] = [
        (cls.__name__, lambda cls=cls: cls().sample(valid, rates, _gen())) for cls in CLASSES
    ]
    calls += [
        ("training_rates", lambda: training_rates(20, max_rate=0.5, complete_share=0.2, generator=_gen())),
        ("eval_keep", lambda: eval_keep(valid, rate=0.3, seed=1, split="test")),
        ("EvalMaskCache", lambda: EvalMaskCache(valid, rates=(0.1, 0.2), seed=1, split="test").keep(0.1)),
        ("pattern_keep", lambda: pattern_keep(valid, ("text",))),
        ("apply_keep", lambda: apply_keep({"text": torch.ones(20, 12, 2)}, {"text": valid["text"]})),
        ("build_simulator", lambda: build_simulator("mixed", modality_share=0.1)),
    ]
    return calls


def test_no_public_function_touches_the_global_rng() -> None:
    for name, call in _calls():
        torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
        call()
        assert torch.equal(torch.random.get_rng_state(), torch_state), name
        assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state)), name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", CLASSES)
def test_masks_follow_valid_to_cuda_and_do_not_depend_on_device(cls: type[BaseMissingness]) -> None:
    valid, rates = _valid(32), _rates(32, 0.5)
    cpu = cls().sample(valid, rates, _gen())
    cuda = cls().sample({m: v.cuda() for m, v in valid.items()}, rates.cuda(), _gen())
    assert all(k.device.type == "cuda" for k in cuda.values())
    assert _equal({m: k.cpu() for m, k in cuda.items()}, cpu)
