"""Missing-rate curricula: defining values, bounds, rebuilding, adaptive state, validation."""

from __future__ import annotations

import copy
import io
import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch

from fsrf import config_from_dict
from fsrf._errors import FSRFError
from fsrf.curriculum import (
    CURRICULA,
    AdaptiveCurriculum,
    BaseCurriculum,
    ConstantCurriculum,
    CosineCurriculum,
    ExponentialCurriculum,
    LinearCurriculum,
    ReplayCurriculum,
    StepCurriculum,
    build_curriculum,
)

EXAMPLES: dict[str, dict[str, Any]] = {
    "constant": {"end": 0.4},
    "linear": {"start": 0.1, "end": 0.7, "warmup_epochs": 2, "ramp_epochs": 4},
    "step": {"start": 0.1, "end": 0.5, "warmup_epochs": 1, "step_epochs": 2, "step_size": 0.15},
    "cosine": {"start": 0.0, "end": 0.8, "warmup_epochs": 0, "ramp_epochs": 4},
    "exponential": {
        "start": 0.2, "end": 0.8, "warmup_epochs": 0, "ramp_epochs": 2, "sharpness": 2 * math.log(2)
    },
    "adaptive": {"start": 0.0, "end": 0.25, "step_size": 0.1, "patience": 2},
    "replay": {"replay_epochs": (0, 3, 5), "replay_rates": (0.2, 0.6, 0.4)},
}
MONOTONE = [k for k in EXAMPLES if k != "replay"]  # replay follows its points, down as well as up


def _scores(seed: int, n: int) -> list[float]:
    """A noisy, mostly falling validation objective with plateaus and a NaN."""
    rng = np.random.default_rng(seed)
    values = [float(v) for v in 1.0 / (1.0 + np.arange(n) / 10) + rng.normal(0, 0.05, n)]
    values[n // 2] = float("nan")
    return values


def _run(c: BaseCurriculum, scores: list[float], first_epoch: int = 0) -> list[float]:
    """The trainer's loop: read the epoch's rate, then observe its objective."""
    rates = []
    for epoch, score in enumerate(scores, start=first_epoch):
        rates.append(c.rate(epoch))
        c.observe(score)
    return rates


# --- defining values -------------------------------------------------------------------------


def test_registry_is_keyed_by_kind() -> None:
    assert list(CURRICULA) == ["constant", "linear", "step", "cosine", "exponential", "adaptive", "replay"]
    for kind, cls in CURRICULA.items():
        assert cls.kind == kind and set(cls.params) == set(EXAMPLES[kind])


def test_constant() -> None:
    c = ConstantCurriculum(end=0.4)
    assert [c.rate(e) for e in (0, 1, 57)] == [0.4, 0.4, 0.4]


def test_linear() -> None:
    c = LinearCurriculum(start=0.1, end=0.7, warmup_epochs=2, ramp_epochs=4)
    # flat at 0.1 for epochs 0-2 (epoch 2 is the ramp's t = 0), +0.15 per epoch, 0.7 from epoch 6.
    assert [c.rate(e) for e in (0, 1, 2)] == [0.1, 0.1, 0.1]
    assert [c.rate(e) for e in (3, 4, 5)] == pytest.approx([0.25, 0.4, 0.55], abs=1e-15)
    assert [c.rate(e) for e in (6, 7, 99)] == [0.7, 0.7, 0.7]


def test_step() -> None:
    c = StepCurriculum(start=0.1, end=0.5, warmup_epochs=1, step_epochs=2, step_size=0.15)
    # warm-up epoch 0, then raises at epochs 1 + 2k: 0.1 (0-2), 0.25 (3-4), 0.4 (5-6), capped 0.5 (7-).
    rates = [c.rate(e) for e in range(10)]
    assert rates[:3] == [0.1, 0.1, 0.1]
    assert rates[3:7] == pytest.approx([0.25, 0.25, 0.4, 0.4], abs=1e-15)
    assert rates[7:] == [0.5, 0.5, 0.5]


def test_cosine() -> None:
    c = CosineCurriculum(start=0.0, end=0.8, warmup_epochs=0, ramp_epochs=4)
    # 0.8 * (1 - cos(pi * t)) / 2 at t = 0, 1/4, 1/2, 3/4, 1
    expected = [0.0, 0.4 * (1 - math.sqrt(0.5)), 0.4, 0.4 * (1 + math.sqrt(0.5)), 0.8, 0.8]
    assert [c.rate(e) for e in range(6)] == pytest.approx(expected, abs=1e-15)
    assert c.rate(1) == pytest.approx(0.117157287525381, abs=1e-14)
    assert c.rate(0) == 0.0 and c.rate(4) == 0.8


def test_exponential() -> None:
    c = ExponentialCurriculum(start=0.2, end=0.8, warmup_epochs=0, ramp_epochs=2, sharpness=2 * math.log(2))
    # at t = 1/2: (1 - 2**-1) / (1 - 2**-2) = 2/3 of the way: 0.2 + 0.6 * 2/3 = 0.6 (linear: 0.5).
    assert c.rate(0) == 0.2
    assert c.rate(1) == pytest.approx(0.6, abs=1e-15)
    assert c.rate(2) == 0.8 and c.rate(3) == 0.8
    linear = LinearCurriculum(start=0.2, end=0.8, warmup_epochs=0, ramp_epochs=10)
    fast = ExponentialCurriculum(start=0.2, end=0.8, warmup_epochs=0, ramp_epochs=10, sharpness=3.0)
    assert all(fast.rate(e) > linear.rate(e) for e in range(1, 10))


def test_warmup_delays_every_ramp() -> None:
    for kind in ("linear", "cosine", "exponential"):
        c = build_curriculum(**{**EXAMPLES[kind], "kind": kind, "warmup_epochs": 5})
        assert [c.rate(e) for e in range(6)] == [EXAMPLES[kind]["start"]] * 6
        assert c.rate(6) > c.rate(5) and c.rate(5 + EXAMPLES[kind]["ramp_epochs"]) == EXAMPLES[kind]["end"]


def test_adaptive_raises_after_patience() -> None:
    c = AdaptiveCurriculum(start=0.0, end=0.25, step_size=0.1, patience=2)
    steps = [  # (score, rate after observing it)
        (1.0, 0.0),  # first: best 1.0
        (0.9, 0.0),  # improves
        (0.9, 0.0),  # equal is no improvement: bad 1
        (0.95, 0.1),  # bad 2 = patience: raise, counter restarts
        (0.8, 0.1),  # improves
        (0.8 - 1e-13, 0.1),  # within 1e-12: bad 1
        (float("nan"), 0.2),  # NaN never improves: bad 2, raise
        (0.85, 0.2),  # bad 1 (the best 0.8 is kept across raises)
        (0.9, 0.25),  # raise capped at end
        (0.9, 0.25),  # bad 1
        (0.9, 0.25),  # bad 2: a raise at end keeps end; the counter restarts
    ]
    assert c.rate(0) == 0.0
    for epoch, (score, expected) in enumerate(steps, start=1):
        c.observe(score)
        assert c.rate(epoch) == pytest.approx(expected, abs=1e-15), epoch
    assert c.state_dict() == {"rate": 0.25, "best": 0.8, "bad_epochs": 0}


def test_observe_is_a_no_op_for_scheduled_kinds() -> None:
    for kind in ("constant", "linear", "step", "cosine", "exponential"):
        c = build_curriculum(kind, **EXAMPLES[kind])
        before = [c.rate(e) for e in range(20)]
        for score in (3.0, 2.0, float("nan"), 5.0):
            c.observe(score)
        assert [c.rate(e) for e in range(20)] == before and c.state_dict() == {}


# --- bounds and monotonicity -----------------------------------------------------------------


def _variants() -> list[tuple[str, dict[str, Any]]]:
    out = [(kind, params) for kind, params in EXAMPLES.items() if kind in MONOTONE]
    out += [("linear", {"start": 0.1, "end": 0.7, "warmup_epochs": 0, "ramp_epochs": 7})]
    out += [("cosine", {"start": 0.3, "end": 0.3, "warmup_epochs": 3, "ramp_epochs": 1})]
    exponential = {"start": 0.0, "end": 1.0, "warmup_epochs": 10, "ramp_epochs": 33, "sharpness": 40.0}
    out += [("exponential", exponential)]
    out += [("exponential", {**exponential, "start": 0.1, "end": 0.9, "ramp_epochs": 9, "sharpness": 1e-9})]
    out += [("step", {"start": 0.0, "end": 1.0, "warmup_epochs": 0, "step_epochs": 1, "step_size": 0.1})]
    out += [("adaptive", {"start": 0.1, "end": 0.9, "step_size": 0.07, "patience": 1})]
    return out


@pytest.mark.parametrize(("kind", "params"), _variants())
def test_monotone_and_within_bounds_over_100_epochs(kind: str, params: dict[str, Any]) -> None:
    c = build_curriculum(kind, **params)
    rates = _run(c, _scores(0, 100))
    start = params.get("start", params["end"])
    assert all(isinstance(r, float) for r in rates)
    assert all(start <= r <= params["end"] for r in rates)
    assert all(a <= b for a, b in itertools.pairwise(rates))
    if kind != "adaptive":
        assert rates[-1] == params["end"]


# --- rebuilding and state --------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_to_dict_round_trip(kind: str) -> None:
    c = build_curriculum(kind, **EXAMPLES[kind])
    d = c.to_dict()
    assert d == {"kind": kind, **EXAMPLES[kind]} and list(d) == ["kind", *CURRICULA[kind].params]
    assert all(type(v) in (str, int, float) or (type(v) is tuple and all(type(x) in (int, float) for x in v))
               for v in d.values())
    rebuilt = build_curriculum(**d)
    assert type(rebuilt) is type(c) and rebuilt == c and repr(rebuilt) == repr(c)
    scores = _scores(1, 100)
    assert _run(rebuilt, scores) == _run(c, scores)


def test_adaptive_state_dict_round_trip_mid_run() -> None:
    scores = _scores(2, 60)
    whole = AdaptiveCurriculum(start=0.0, end=0.9, step_size=0.05, patience=2)
    expected = _run(whole, scores)
    first = AdaptiveCurriculum(start=0.0, end=0.9, step_size=0.05, patience=2)
    _run(first, scores[:23])
    state = first.state_dict()
    assert all(type(v) in (int, float, bool, type(None)) for v in state.values())
    buffer = io.BytesIO()
    torch.save({"curriculum": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["curriculum"]
    resumed = build_curriculum(**first.to_dict())
    resumed.load_state_dict(loaded)
    assert resumed == first
    assert _run(resumed, scores[23:], first_epoch=23) == expected[23:]
    assert _run(first, scores[23:], first_epoch=23) == expected[23:]
    assert max(expected) > 0.0  # the run did raise


def test_adaptive_state_before_any_observation() -> None:
    c = AdaptiveCurriculum(start=0.2, end=0.6, step_size=0.1, patience=3)
    assert c.state_dict() == {"rate": 0.2, "best": None, "bad_epochs": 0}
    other = copy.deepcopy(c)
    other.observe(1.0)
    other.load_state_dict(c.state_dict())
    assert other == c


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"rate": 0.2, "best": None}, "bad_epochs, best, rate"),
        ({"rate": 0.2, "best": None, "bad_epochs": 0, "x": 1}, "bad_epochs, best, rate"),
        ({"rate": 0.7, "best": None, "bad_epochs": 0}, "rate: got 0.7"),
        ({"rate": 0.2, "best": "low", "bad_epochs": 0}, "best: got 'low'"),
        ({"rate": 0.2, "best": 1.0, "bad_epochs": 3}, "bad_epochs: got 3"),
    ],
)
def test_adaptive_bad_state(state: dict[str, Any], match: str) -> None:
    c = AdaptiveCurriculum(start=0.2, end=0.6, step_size=0.1, patience=3)
    with pytest.raises(FSRFError, match=match):
        c.load_state_dict(state)


def test_scheduled_kinds_take_only_an_empty_state() -> None:
    c = LinearCurriculum(start=0.0, end=0.5, warmup_epochs=0, ramp_epochs=3)
    c.load_state_dict({})
    with pytest.raises(FSRFError, match="unexpected keys \\['rate'\\] for kind 'linear'"):
        c.load_state_dict({"rate": 0.3})


# --- validation ------------------------------------------------------------------------------

BAD = [
    ("constant", {"end": 1.5}, "curriculum.end"),
    ("constant", {"end": float("nan")}, "curriculum.end"),
    ("constant", {"end": True}, "curriculum.end"),
    ("linear", {"start": -0.1}, "curriculum.start"),
    ("linear", {"start": "0.1"}, "curriculum.start"),
    ("linear", {"end": 1.01}, "curriculum.end"),
    ("linear", {"start": 0.8, "end": 0.5}, "curriculum.start: 0.8 exceeds curriculum.end=0.5"),
    ("linear", {"warmup_epochs": -1}, "curriculum.warmup_epochs"),
    ("linear", {"warmup_epochs": 1.5}, "curriculum.warmup_epochs"),
    ("linear", {"ramp_epochs": 0}, "curriculum.ramp_epochs"),
    ("cosine", {"ramp_epochs": 0}, "curriculum.ramp_epochs"),
    ("cosine", {"start": 0.9}, "curriculum.start"),
    ("exponential", {"sharpness": 0.0}, "curriculum.sharpness"),
    ("exponential", {"sharpness": -1.0}, "curriculum.sharpness"),
    ("exponential", {"sharpness": float("inf")}, "curriculum.sharpness"),
    ("exponential", {"ramp_epochs": -2}, "curriculum.ramp_epochs"),
    ("step", {"step_epochs": 0}, "curriculum.step_epochs"),
    ("step", {"step_size": 0.0}, "curriculum.step_size"),
    ("step", {"step_size": 1.5}, "curriculum.step_size"),
    ("step", {"warmup_epochs": -3}, "curriculum.warmup_epochs"),
    ("step", {"end": 0.05}, "curriculum.start"),
    ("adaptive", {"patience": 0}, "curriculum.patience"),
    ("adaptive", {"patience": 2.0}, "curriculum.patience"),
    ("adaptive", {"step_size": -0.1}, "curriculum.step_size"),
    ("adaptive", {"end": -0.5}, "curriculum.end"),
]


@pytest.mark.parametrize(("kind", "override", "match"), BAD)
def test_invalid_parameters(kind: str, override: dict[str, Any], match: str) -> None:
    with pytest.raises(FSRFError, match=match) as info:
        build_curriculum(kind, **{**EXAMPLES[kind], **override})
    assert "\n" not in str(info.value)
    with pytest.raises(FSRFError, match=match):
        CURRICULA[kind](**{**EXAMPLES[kind], **override})


def test_messages_state_the_expected_range() -> None:
    cases = [
        ({"kind": "linear", **EXAMPLES["linear"], "start": 2.0}, "got 2.0, expected a rate in \\[0, 1\\]"),
        ({"kind": "linear", **EXAMPLES["linear"], "ramp_epochs": 0}, "got 0, expected an integer >= 1"),
        ({"kind": "step", **EXAMPLES["step"], "step_size": 0.0}, "got 0.0, expected a value in \\(0, 1\\]"),
        ({"kind": "exponential", **EXAMPLES["exponential"], "sharpness": 0}, "expected a finite number > 0"),
    ]
    for params, match in cases:
        with pytest.raises(FSRFError, match=match):
            build_curriculum(**params)


def test_unknown_kind_lists_the_known_ones() -> None:
    known = "constant, linear, step, cosine, exponential, adaptive"
    with pytest.raises(FSRFError, match=f"curriculum.kind: 'sigmoid' is not one of {known}"):
        build_curriculum("sigmoid", end=0.5)


def test_missing_and_unexpected_parameters_are_named() -> None:
    with pytest.raises(FSRFError, match="missing parameters warmup_epochs, ramp_epochs"):
        build_curriculum("linear", start=0.0, end=0.5)
    with pytest.raises(FSRFError, match="takes no parameters patience, sharpness"):
        build_curriculum("linear", **EXAMPLES["linear"], sharpness=2.0, patience=3)
    with pytest.raises(FSRFError, match="takes no parameters start"):
        build_curriculum("constant", end=0.5, start=0.0)


def test_constructors_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ConstantCurriculum(0.5)  # type: ignore[misc]


@pytest.mark.parametrize("epoch", [-1, 1.5, True])
def test_bad_epoch(epoch: Any) -> None:
    with pytest.raises(FSRFError, match="epoch: got"):
        ConstantCurriculum(end=0.5).rate(epoch)


def test_replay_follows_its_points_piecewise_constant() -> None:
    c = ReplayCurriculum(replay_epochs=[2, 3, 7], replay_rates=[0.1, 0.5, 0.3])
    assert [c.rate(e) for e in range(9)] == [0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3]
    assert c.state_dict() == {} and build_curriculum(**c.to_dict()) == c


@pytest.mark.parametrize(("params", "needle"), [
    ({"replay_epochs": [0, 4, 2], "replay_rates": [0.1, 0.2, 0.3]}, "replay_epochs: [0, 4, 2] is not strictly increasing"),
    ({"replay_epochs": [0, 2], "replay_rates": [0.1, 1.5]}, "replay_rates[1]: got 1.5, expected a rate in [0, 1]"),
    ({"replay_epochs": [0, 2], "replay_rates": [0.1]}, "replay_rates: 1 rates for 2 replay_epochs"),
    ({"replay_epochs": [], "replay_rates": []}, "replay_epochs: empty"),
    ({"replay_epochs": [-1], "replay_rates": [0.1]}, "replay_epochs[0]: got -1, expected an integer >= 0"),
])
def test_replay_bad_points_are_one_line_errors(params, needle) -> None:
    with pytest.raises(FSRFError) as err:
        config_from_dict({"curriculum": {"kind": "replay", **params}}, source="best.yaml")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_replay_from_a_yaml_config_trains_at_its_rates(tmp_path) -> None:
    from fsrf import with_overrides

    config = config_from_dict({"curriculum": {"kind": "replay", "replay_epochs": [0, 1], "replay_rates": [0.3, 0.1]}})
    assert [config.curriculum.build().rate(e) for e in range(3)] == [0.3, 0.1, 0.1]
    assert with_overrides(config, {"curriculum.replay_rates": [0.5, 0.2]}).curriculum.build().rate(1) == 0.2
