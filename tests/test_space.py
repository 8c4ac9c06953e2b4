"""Search spaces: shipped files load, conditional sampling, trial configs, fingerprints, load errors."""

from __future__ import annotations

import math
import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from fsrf import Config, FSRFError, flatten_config
from fsrf.curriculum import CURRICULA
from fsrf.model import model_names
from tuning.space import SearchSpace, load_space

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "tuning" / "spaces").glob("*.yaml"))
FSRF_SPACES = [p for p in SPACES if p.stem in ("default", "mosi", "mosei", "sims")]
DEFAULT = ROOT / "tuning" / "spaces" / "default.yaml"
SYNTHETIC = (ROOT / "configs" / "synthetic.yaml").as_posix()
WEIGHTS = ("model.homo", "model.diff", "model.recon", "model.noise", "model.distill", "model.align")

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _ask(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` random trials: (Optuna's trial.params, define-by-run's returned constants)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = space.define_by_run(trial)
        out.append((dict(trial.params), constants))
    return out


def test_fsrf_has_four_spaces_and_every_other_model_one() -> None:
    others = {n for n in model_names() if n != "fsrf"}
    assert {p.stem for p in SPACES} == {"default", "mosi", "mosei", "sims"} | others


@pytest.mark.parametrize("path", [p for p in SPACES if p not in FSRF_SPACES], ids=lambda p: p.stem)
def test_every_other_model_space_searches_its_model(path: Path) -> None:
    space = load_space(path)
    assert space.base.model.name == path.stem and space.base.data.dataset == "synthetic"
    assert {"curriculum.kind", "missing.simulator", "optim.lr"} <= set(space.param_names())
    for params, constants in _ask(space, 20, seed=1):
        assert space.to_config({**params, **constants}).model.name == path.stem


@pytest.mark.parametrize("path", FSRF_SPACES, ids=lambda p: p.stem)
def test_every_shipped_space_loads_and_covers_the_fsrf_knobs(path: Path) -> None:
    space = load_space(path)
    assert space.base.data.dataset == {"default": "synthetic"}.get(path.stem, path.stem)
    assert space.base.train.select_metric == space.metric and space.mode in ("min", "max")
    names = set(space.param_names())
    # every searchable kind's params (replay replays a learned schedule: written, not searched)
    curriculum = {f"curriculum.{p}" for kind, cls in CURRICULA.items() if kind != "replay" for p in cls.params}
    assert {*WEIGHTS, "model.align_kind", "curriculum.kind", *curriculum} <= names
    assert {"missing.simulator", "missing.modality_share", "missing.complete_share", "optim.lr"} <= names
    assert all(p.has_switch for p in space.params if p.name in WEIGHTS)
    assert set(space.key_columns()) <= names
    assert 1 <= space.grace_period <= space.base.train.epochs
    text = path.read_text()
    for key in ("base:", "fixed:", "objective:", "scheduler:", "params:", "off_switch", "when:"):
        assert key in text
    for params, constants in _ask(space, 40, seed=1):  # every draw builds a valid config
        assert isinstance(space.to_config({**params, **constants}), Config)


def test_conditional_sampling_only_draws_what_the_choices_read() -> None:
    space = load_space(DEFAULT)
    seen_kinds, seen_simulators, seen_switch = set(), set(), set()
    for params, constants in _ask(space, 300):
        kind = params["curriculum.kind"]
        seen_kinds.add(kind)
        drawn = {k for k in params if k.startswith("curriculum.")}
        assert drawn == {"curriculum.kind", *(f"curriculum.{p}" for p in CURRICULA[kind].params)}
        simulator = params["missing.simulator"]
        seen_simulators.add(simulator)
        assert ("missing.modality_share" in params) == (simulator == "mixed")
        assert ("model.align_kind" in params) == (params["model.align:off"] is False)

        config = space.to_config({**params, **constants})
        flat, base = flatten_config(config), flatten_config(space.base)
        for name in WEIGHTS:
            off = params[f"{name}:off"]
            seen_switch.add(off)
            assert (name in params) != off and (name in constants) == off
            assert flat[name] == (0.0 if off else pytest.approx(params[name]))
        for name in space.param_names():
            if name in params:
                assert flat[name] == params[name]
            elif name not in constants:
                assert flat[name] == base[name]  # not drawn: the base value
    assert seen_kinds == set(CURRICULA) - {"replay"}  # replay is written (best.yaml of a learned schedule), not searched
    assert seen_simulators == {"random", "modality", "mixed"} and seen_switch == {False, True}


def test_ray_optuna_search_suggests_configs_to_config_accepts(tmp_path: Path) -> None:
    from ray.tune.search.optuna import OptunaSearch

    space = load_space(DEFAULT)
    searcher = OptunaSearch(space=space.define_by_run, metric="objective", mode="min", seed=0)
    names = {n for p in space.params for n in (p.name, p.switch_name)}
    for i in range(20):
        suggested = searcher.suggest(f"trial_{i}")
        assert set(suggested) <= names  # flat: dotted names survive unflatten_dict
        config = space.to_config(suggested)
        assert config.curriculum.kind == suggested["curriculum.kind"]
        assert config.optim.lr == suggested["optim.lr"]
        searcher.on_trial_complete(f"trial_{i}", {"objective": float(i), "training_iteration": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune checkpoints the searcher, space included
    copy = pickle.loads(pickle.dumps(space))
    restored = OptunaSearch(space=copy.define_by_run, metric="objective", mode="min")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert isinstance(space.to_config(restored.suggest("trial_after_restore")), Config)


TRIAL = {
    "model.homo:off": False, "model.homo": 0.5, "model.diff:off": True, "model.recon:off": False,
    "model.recon": 1.5, "model.noise:off": False, "model.noise": 0.05, "model.distill:off": False,
    "model.distill": 2.0, "model.distill_margin": 0.4, "model.align:off": True, "model.align": 0.0, "curriculum.kind": "linear",
    "curriculum.end": 0.6, "curriculum.start": 0.1, "curriculum.warmup_epochs": 1,
    "curriculum.ramp_epochs": 4,
    "missing.simulator": "random", "missing.complete_share": 0.25, "optim.lr": 1e-3,
    "optim.weight_decay": 1e-4, "optim.batch_size": 32,
}


def test_to_config_builds_the_trial_and_reads_store_round_trips() -> None:
    space = load_space(DEFAULT)
    config = space.to_config(TRIAL)
    model = config.model
    assert (model.homo, model.diff, model.align, model.align_kind) == (0.5, 0.0, 0.0, "mmd")
    assert model.distill_margin == 0.4
    assert config.curriculum.build().to_dict() == {
        "kind": "linear", "start": 0.1, "end": 0.6, "warmup_epochs": 1, "ramp_epochs": 4}
    assert (config.optim.batch_size, config.train.epochs) == (32, 8)
    assert (model.hidden, model.recovery, model.noise_dim) == (space.base.model.hidden, True, 8)  # not sampled
    # None / NaN count as absent (store columns of undrawn params); ints promoted to floats are taken back
    undrawn = {"curriculum.patience": math.nan, "missing.modality_share": None}
    assert space.to_config({**TRIAL, **undrawn}) == config
    assert space.to_config({**TRIAL, "curriculum.ramp_epochs": 4.0}) == config
    # a switch may be left out: the value says on (given) or off (0 or absent)
    assert space.to_config({k: v for k, v in TRIAL.items() if not k.endswith(":off")}) == config


def test_optuna_params_give_back_what_define_by_run_drew() -> None:
    """The journal's and ``analysis.to_optuna``'s translation: a Tune config (Optuna's draws plus
    define-by-run's constants) walks back to the very params and distributions Optuna holds."""
    space = load_space(DEFAULT)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(25):
        trial = study.ask()
        constants = space.define_by_run(trial)
        params, dists = space.optuna_params({**trial.params, **constants})
        assert params == trial.params
        assert dists == trial.distributions
    # a stored value a hair outside its range (store round trips) is clipped into it, as Optuna requires
    lr = next(p for p in space.params if p.name == "optim.lr")
    params, dists = space.optuna_params({**TRIAL, "optim.lr": lr.high * (1 + 1e-12)})
    assert params["optim.lr"] == lr.high == dists["optim.lr"].high
    with pytest.raises(FSRFError, match="model.homoo"):
        space.optuna_params({**TRIAL, "model.homoo": 1.0})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model.homoo": 1.0}, "model.homoo"),
        ({"optim.lr": None}, "optim.lr"),
        ({"optim.lr": 1.0}, "optim.lr"),
        ({"optim.batch_size": 48}, "optim.batch_size"),
        ({"curriculum.ramp_epochs": 4.5}, "curriculum.ramp_epochs"),
        ({"model.homo:off": True}, "model.homo"),
        ({"model.homo:off": "yes"}, "model.homo:off"),
        ({"curriculum.step_size": 0.1}, "curriculum.step_size"),
        ({"missing.modality_share": 0.5}, "missing.modality_share"),
    ],
)
def test_to_config_refuses_configs_the_space_cannot_draw(change: dict[str, Any], named: str) -> None:
    with pytest.raises(FSRFError) as info:
        load_space(DEFAULT).to_config({**TRIAL, **change})
    assert named in str(info.value) and "\n" not in str(info.value)


def _write(tmp_path: Path, body: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


MINIMAL = f"""\
base: {SYNTHETIC}
fixed: {{train.epochs: 6}}
objective: {{metric: MAE, mode: min}}
scheduler: {{grace_period: 2, reduction_factor: 3}}
params:
  model.homo: {{float: [0.01, 3.0], log: true, off_switch: true}}
  curriculum.kind: {{choice: [constant, linear, step]}}
  curriculum.ramp_epochs: {{int: [2, 5], when: {{curriculum.kind: [linear]}}}}
"""


def test_fingerprint_is_stable_and_follows_the_content(tmp_path: Path) -> None:
    assert load_space(DEFAULT).fingerprint() == load_space(DEFAULT).fingerprint()
    first = load_space(_write(tmp_path, MINIMAL, "a.yaml")).fingerprint()
    assert len(first) == 64 and int(first, 16) >= 0
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    assert load_space(_write(moved, "# a comment\n" + MINIMAL, "b.yaml")).fingerprint() == first
    for change in ("[0.01, 3.0]", "[2, 5]", "train.epochs: 6", "grace_period: 2"):
        other = {"[0.01, 3.0]": "[0.02, 3.0]", "[2, 5]": "[2, 4]", "train.epochs: 6": "train.epochs: 7",
                 "grace_period: 2": "grace_period: 1"}[change]
        assert load_space(_write(tmp_path, MINIMAL.replace(change, other), "c.yaml")).fingerprint() != first


def test_minimal_space_sampling_conditions_on_an_off_switch(tmp_path: Path) -> None:
    body = MINIMAL + "  model.align: {float: [0.01, 1.0], log: true, off_switch: true}\n" \
                     "  model.align_kind: {choice: [cmd], when: {model.align: off}}\n"
    space = load_space(_write(tmp_path, body))
    assert space.key_columns() == ("model.homo", "curriculum.kind", "model.align")
    for params, constants in _ask(space, 60):
        assert ("model.align_kind" in params) == params["model.align:off"]
        assert ("curriculum.ramp_epochs" in params) == (params["curriculum.kind"] == "linear")
        kind = space.to_config({**params, **constants}).model.align_kind
        assert kind == ("cmd" if params["model.align:off"] else "mmd")  # mmd: the default


def test_base_override_replaces_the_files_base(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, MINIMAL), base_override=ROOT / "configs" / "mosi.yaml")
    assert space.base.data.dataset == "mosi" and space.base.train.epochs == 6


def _swap(*lines: str) -> str:
    """MINIMAL with its model.homo param replaced by ``lines`` (param entries)."""
    homo = "  model.homo: {float: [0.01, 3.0], log: true, off_switch: true}\n"
    return MINIMAL.replace(homo, "".join(f"  {line}\n" for line in lines))


def _add(*lines: str) -> str:
    """MINIMAL with ``lines`` appended to its params."""
    return MINIMAL + "".join(f"  {line}\n" for line in lines)


def _sub(old: str, new: str) -> str:
    return MINIMAL.replace(old, new)


ALIGN_KIND = "model.align_kind: {choice: [cmd], when: "
ERRORS = {
    "unknown top key": (MINIMAL + "extra: 1\n", "extra"),
    "not a path": (_swap("model.homoo: {float: [0.1, 1.0]}"), "model.homoo"),
    "not a path, no section": (_swap("lr: {float: [0.1, 1.0]}"), "lr"),
    "inverted range": (_swap("model.homo: {float: [3.0, 0.1]}"), "model.homo"),
    "empty range": (_swap("model.homo: {float: [0.5, 0.5]}"), "model.homo"),
    "log touches 0": (_swap("optim.lr: {float: [0.0, 0.01], log: true}"), "optim.lr"),
    "log crosses 0": (_swap("model.homo: {float: [-1.0, 1.0], log: true}"), "model.homo"),
    "float range on int field": (_swap("optim.batch_size: {float: [16, 64]}"), "optim.batch_size"),
    "int bounds not ints": (_swap("train.seed: {int: [1, 2.5]}"), "train.seed"),
    "range on str field": (_swap("model.align_kind: {int: [0, 1]}"), "model.align_kind"),
    "range beyond the field": (_swap("missing.complete_share: {float: [0.0, 1.5]}"), "complete_share"),
    "negative weight": (_swap("model.homo: {float: [-1.0, 1.0]}"), "model.homo"),
    "off value invalid": (_swap("optim.lr: {float: [0.001, 0.01], log: true, off_switch: true}"), "optim.lr"),
    "bad choice value": (_swap("model.align_kind: {choice: [cmd, zigzag]}"), "model.align_kind"),
    "bad curriculum kind": (_sub("[constant, linear, step]", "[linear, zigzag]"), "curriculum.kind"),
    "choice of wrong type": (_swap("optim.batch_size: {choice: [32, big]}"), "optim.batch_size"),
    "duplicate choice": (_swap("optim.batch_size: {choice: [32, 32]}"), "optim.batch_size"),
    "tuple field": (_swap("missing.valid_rates: {choice: [0.1]}"), "missing.valid_rates"),
    "unknown spec key": (_swap("model.homo: {float: [0.1, 1.0], logg: true}"), "model.homo"),
    "bare off key": (_swap("model.homo: {float: [0.1, 1.0], off: true}"), "off_switch"),
    "two kinds": (_swap("model.homo: {float: [0.1, 1.0], int: [1, 2]}"), "model.homo"),
    "off on a choice": (_swap("model.align_kind: {choice: [cmd, mmd], off_switch: true}"), "model.align_kind"),
    "step not dividing": (_swap("optim.batch_size: {int: [16, 64], step: 20}"), "optim.batch_size"),
    "when unknown": (_add(ALIGN_KIND + "{model.alignn: on}}"), "model.alignn"),
    "when later param": (
        _add(ALIGN_KIND + "{model.align: on}}", "model.align: {float: [0.1, 1.0], off_switch: true}"),
        "declared below"),
    "when value outside choices": (_sub("kind: [linear]}", "kind: [cosine]}"), "cosine"),
    "when on a range": (_add("optim.lr: {float: [0.001, 0.01]}", ALIGN_KIND + "{optim.lr: 0.005}}"), "lr"),
    "when switch value": (_add(ALIGN_KIND + "{model.homo: maybe}}"), "maybe"),
    "curriculum param without when": (_add("curriculum.sharpness: {float: [1.0, 4.0]}"), "sharpness"),
    "curriculum param under a kind that ignores it": (
        _sub("curriculum.kind: [linear]}", "curriculum.kind: [linear, step]}"), "curriculum.ramp_epochs"),
    "curriculum param but kind fixed": (
        _sub("fixed: {train.epochs: 6}", "fixed: {train.epochs: 6, curriculum.kind: constant}")
        .replace("  curriculum.kind: {choice: [constant, linear, step]}\n", "")
        .replace(", when: {curriculum.kind: [linear]}", ""), "curriculum.ramp_epochs"),
    "modality_share without mixed": (
        _add("missing.simulator: {choice: [random, mixed]}", "missing.modality_share: {float: [0.1, 0.9]}"),
        "missing.modality_share"),
    "range invalid only under a kind": (_sub("int: [2, 5]", "int: [0, 5]"), "ramp_epochs: low bound 0"),
    "start above end": (
        _add("curriculum.end: {float: [0.3, 0.9]}",
             "curriculum.start: {float: [0.0, 0.5], when: {curriculum.kind: [linear, step]}}"),
        "curriculum.start"),
    "heads do not divide hidden": (
        _swap("model.hidden: {choice: [32, 48]}", "model.heads: {choice: [2, 32]}"), "model.heads"),
    "param also fixed": (_sub("{train.epochs: 6}", "{train.epochs: 6, model.homo: 1.0}"), "model.homo"),
    "reserved param": (_swap("train.epochs: {int: [2, 8]}"), "train.epochs"),
    "fixed unknown path": (_sub("train.epochs: 6", "train.epoch: 6"), "train.epoch"),
    "fixed bad value": (_sub("train.epochs: 6", "train.epochs: 0"), "train.epochs"),
    "fixed bad type": (_sub("train.epochs: 6", "train.epochs: many"), "train.epochs"),
    "fixed select metric": (_sub("train.epochs: 6", "train.select_metric: Corr"), "train.select_metric"),
    "metric of another dataset": (_sub("metric: MAE", "metric: Mult_acc_3"), "metric"),
    "unknown metric": (_sub("metric: MAE", "metric: RMSE"), "RMSE"),
    "bad mode": (_sub("mode: min", "mode: best"), "mode"),
    "mode against the metric": (_sub("mode: min", "mode: max"), "mode"),
    "unknown objective key": (_sub("mode: min", "mode: min, goal: 1"), "goal"),
    "grace period zero": (_sub("grace_period: 2", "grace_period: 0"), "grace_period"),
    "grace period above epochs": (_sub("grace_period: 2", "grace_period: 7"), "grace_period"),
    "reduction factor one": (_sub("reduction_factor: 3", "reduction_factor: 1"), "reduction_factor"),
    "unknown scheduler key": (_sub("reduction_factor: 3", "reduction_factor: 3, brackets: 2"), "brackets"),
    "no params": (MINIMAL.split("params:")[0] + "params: {}\n", "params"),
    "missing base file": (_sub(SYNTHETIC, "nowhere.yaml"), "base"),
    "bad columns": (MINIMAL + "columns: [optim.lr]\n", "columns"),
    "not yaml": ("params: [unclosed\n", "space.yaml"),
}


@pytest.mark.parametrize(("body", "named"), ERRORS.values(), ids=ERRORS.keys())
def test_a_bad_space_fails_on_load_naming_the_key(tmp_path: Path, body: str, named: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(FSRFError) as info:
        load_space(path)
    message = str(info.value)
    assert str(path) in message and named in message and "\n" not in message, message


def test_the_minimal_space_itself_is_valid(tmp_path: Path) -> None:
    assert load_space(_write(tmp_path, MINIMAL)).param_names() == (
        "model.homo", "curriculum.kind", "curriculum.ramp_epochs")


def test_importing_the_space_module_loads_neither_ray_nor_optuna() -> None:
    code = "import sys, tuning.space; print(any(m in sys.modules for m in ('ray', 'optuna')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_gp_and_cmaes_are_refused_for_spaces_they_would_sample_at_random(tmp_path) -> None:
    """GP and CMA-ES model a fixed numeric vector: a conditional parameter (and for CMA-ES a
    categorical one) is refused with one line naming it; a plain numeric space gets the sampler."""
    import optuna

    from tuning._run import build_sampler, check_sampler

    repo = Path(__file__).resolve().parents[1]
    default = load_space(repo / "tuning" / "spaces" / "default.yaml")
    first_conditional = next(p.name for p in default.params if p.when or p.has_switch)
    for name in ("gp", "cmaes"):
        with pytest.raises(FSRFError, match=rf"--sampler {name}: parameter \S+ is (conditional|categorical)") as err:
            check_sampler(name, default)
        assert "\n" not in str(err.value)
    with pytest.raises(FSRFError, match=rf"--sampler gp: parameter {re.escape(first_conditional)} is conditional"):
        check_sampler("gp", default)
    numeric = tmp_path / "numeric.yaml"
    numeric.write_text(yaml.safe_dump({
        "base": str(repo / "configs" / "synthetic.yaml"),
        "objective": {"metric": "MAE", "mode": "min"}, "scheduler": {"grace_period": 1, "reduction_factor": 2},
        "params": {"optim.lr": {"float": [1e-4, 1e-2], "log": True}, "model.homo": {"float": [0.0, 1.0]}},
    }))
    space = load_space(numeric)
    assert isinstance(build_sampler("gp", space, seed=0), optuna.samplers.GPSampler)
    assert isinstance(build_sampler("cmaes", space, seed=0), optuna.samplers.CmaEsSampler)
    assert isinstance(build_sampler("tpe", default, seed=0), optuna.samplers.TPESampler)
