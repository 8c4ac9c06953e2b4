"""``fsrf compare``: equal-budget comparisons in one table, resumable, refusing bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests_support import DG_TINY, TINY

from fsrf import config_from_dict, save_config, with_overrides
from fsrf.cli import main


@pytest.fixture()
def tiny_yaml(tmp_path: Path) -> Path:
    config = with_overrides(config_from_dict(TINY), {"train.epochs": 2})
    path = tmp_path / "tiny.yaml"
    save_config(config, path)
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fsrf compare: error: ")
    return err[0]


def test_compare_two_models_without_search_writes_one_table_and_resumes(tiny_yaml, tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--models", "fsrf", "plain", "--config", str(tiny_yaml), "--budget", "0",
            "--final-seeds", "2", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    table = results["table"]
    assert set(table["random"]) == {"fsrf", "plain"} and "Average" in table["random"]["plain"]
    assert set(table["patterns"]["fsrf"]) >= {"Average"} and len(table["patterns"]["fsrf"]) >= 7
    paired = table["paired"]["plain"]["random/MAE"]
    runs = results["runs"]
    diffs = [p["random"]["Average"]["MAE"] - f["random"]["Average"]["MAE"]
             for p, f in zip(runs["plain"], runs["fsrf"])]
    assert paired["n"] == 2 and paired["mean_diff"] == pytest.approx(sum(diffs) / 2)
    text = (out / "compare.md").read_text()
    assert "paired t-test, n = 2 seeds" in text and "| 0.0 |" in text
    assert (out / "compare.csv").read_text().startswith("protocol,condition,model,metric,mean,sd,text_protocol")
    assert text.count("text protocol: features-approx") == 2  # under both tables
    assert table["text_protocol"] == {"fsrf": "features-approx", "plain": "features-approx"}
    assert {r["text_protocol"] for rs in runs.values() for r in rs} == {"features-approx"}
    assert (out / "compare.png").stat().st_size > 0
    # a second run redoes nothing; a seed whose result was lost (an interruption) is trained again
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/final/seed-*/result.json")}
    assert len(done) == 4
    lost = out / "plain" / "final" / "seed-1112" / "result.json"
    lost.unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert lost.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in done.items() if p != lost)
    assert json.loads((out / "results.json").read_text())["table"] == table


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--models", "fsrf", "nope"], "--models: nope not registered"),
        (["--models", "fsrf", "plain", "--budget", "1"], "smaller than one trial"),
        (["--models", "fsrf", "plain", "--final-seeds", "1"], "--final-seeds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(extra, needle, tiny_yaml, tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(tiny_yaml), "--out", str(out), *extra]) == 2
    assert needle in _error(capsys)
    assert not (out / "compare.md").exists()


def test_a_folder_holding_another_comparison_is_refused_untouched(tiny_yaml, tmp_path, capsys) -> None:
    out = tmp_path / "cmp"
    out.mkdir()
    spec = out / "compare.json"
    spec.write_text(json.dumps({"models": ["misa"], "budget": 3}))
    before = spec.read_text()
    assert main(["compare", "--models", "fsrf", "plain", "--config", str(tiny_yaml), "--out", str(out)]) == 2
    assert "holds another comparison" in _error(capsys)
    assert spec.read_text() == before and sorted(p.name for p in out.iterdir()) == ["compare.json"]


@pytest.mark.slow
def test_compare_searches_each_model_with_the_same_budget(tiny_yaml, tmp_path, capsys) -> None:
    from analysis import load_experiment

    out, storage = tmp_path / "cmp", tmp_path / "ray"
    args = ["compare", "--models", "plain", "lf_dnn", "--config", str(tiny_yaml), "--budget", "4", "--epochs", "2",
            "--final-seeds", "2", "--storage", str(storage), "--num-cpus", "2", "--out", str(out)]
    assert main(args) == 0
    for model in ("plain", "lf_dnn"):
        exp = load_experiment(storage / f"cmp-{model}")
        assert exp.trials.num_rows == 2  # 4 trial-epochs / 2 epochs per trial
        chosen = (out / model / "chosen.yaml").read_text()
        assert f"name: {model}" in chosen
    assert "plain" in (out / "compare.md").read_text()


def test_plain_mixed_holds_the_simulator_fixed_in_plains_space(tmp_path) -> None:
    import yaml

    from analysis._compare import hold_fixed, space_file
    from fsrf._yaml import read_yaml
    from tuning.space import load_space

    raw = hold_fixed(read_yaml(space_file("plain")), {"missing.simulator": "mixed"})
    assert raw["fixed"]["missing.simulator"] == "mixed" and "missing.simulator" not in raw["params"]
    assert "when" not in raw["params"]["missing.modality_share"]  # its condition holds for good
    random = hold_fixed(read_yaml(space_file("plain")), {"missing.simulator": "random"})
    assert "missing.modality_share" not in random["params"]  # its condition can never hold
    raw["base"] = str(space_file("plain").parent.joinpath(raw["base"]).resolve())
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    space = load_space(path)
    assert dict(space.fixed)["missing.simulator"] == "mixed"
    assert "missing.simulator" not in [p.name for p in space.params]


def test_plain_mixed_is_plain_trained_with_the_mixed_simulator(tiny_yaml, tmp_path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--models", "plain", "plain-mixed", "--config", str(tiny_yaml), "--budget", "0",
            "--final-seeds", "2", "--out", str(out)]
    assert main(args) == 0
    from fsrf import load_config

    chosen = load_config(out / "plain-mixed" / "chosen.yaml")
    assert chosen.model.name == "plain" and chosen.missing.simulator == "mixed"
    assert load_config(out / "plain" / "chosen.yaml").missing.simulator != "mixed"


@pytest.mark.slow  # four tiny searches (2 trials of 2 epochs each), then 2 final seeds each
def test_compare_searches_the_models_that_need_side_inputs_hooks_and_stages(tmp_path, capsys) -> None:
    """hme (a neighbour bank), cyin (two stages), dashfusion (TrainBatch.index, epoch hooks) and
    mmslf (per-clip prompts through data.prompts in the shared config, teacher then student) tune
    through their own shipped spaces (``tuning/spaces/<m>.yaml``) with the same budget, and their
    chosen configs are final-trained into one table (midg's DG search:
    ``test_compare_searches_under_dg``)."""
    import math

    import yaml

    from analysis import load_experiment
    from fsrf._run_data import synthetic_data  # tests may read internals
    from fsrf.data._prompts import prompts_csv, synthetic_prompts

    data = {**TINY["data"], "synthetic_kind": "recovery", "synthetic_train": 48, "synthetic_valid": 16,
            "synthetic_test": 16}
    config = with_overrides(config_from_dict({**TINY, "data": data}), {"train.epochs": 2})
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(prompts_csv(synthetic_prompts(synthetic_data(config.data), seed=0)))
    path = tmp_path / "tiny.yaml"
    save_config(with_overrides(config, {"data.prompts": str(prompts)}), path)
    out, storage = tmp_path / "cmp", tmp_path / "ray"
    models = ["hme", "cyin", "dashfusion", "mmslf"]  # mmslf: a teacher epoch, then a student epoch
    assert main(["compare", "--models", *models, "--config", str(path), "--budget", "4", "--epochs", "2",
                 "--final-seeds", "2", "--storage", str(storage), "--num-cpus", "2", "--out", str(out)]) == 0
    for model in models:
        exp = load_experiment(storage / f"cmp-{model}")
        assert exp.trials.num_rows == 2 and set(exp.trials.column("status").to_pylist()) == {"COMPLETE"}, model
        params = [c for c in exp.trials.column_names if c.startswith("config.model.")]
        assert params, f"{model}: its search drew no model parameter"  # its own space, not another's
        chosen = config_from_dict(yaml.safe_load((out / model / "chosen.yaml").read_text()))
        assert chosen.model.name == model
    table = json.loads((out / "results.json").read_text())["table"]
    for key in ("random", "patterns"):
        assert list(table[key]) == models
        for model in models:
            for row in table[key][model].values():
                assert all(math.isfinite(v["mean"]) and math.isfinite(v["sd"]) for v in row.values()), (key, model)
    assert set(table["paired"]) == set(models[1:])
    text = (out / "compare.md").read_text()
    assert all(f"{m} MAE" in text for m in models)


@pytest.mark.slow
def test_compare_searches_under_dg(tmp_path, capsys) -> None:
    """midg searched (budget 2, 1 epoch per trial) and final-trained under the DG protocol."""
    import yaml

    from analysis import load_experiment

    path = tmp_path / "dg.yaml"
    path.write_text(yaml.safe_dump(DG_TINY))
    out, storage = tmp_path / "cmp", tmp_path / "ray"
    assert main(["compare", "--models", "midg", "plain", "--config", str(path), "--budget", "2", "--epochs", "1",
                 "--final-seeds", "2", "--storage", str(storage), "--num-cpus", "2", "--out", str(out)]) == 0
    exp = load_experiment(storage / "cmp-midg")
    assert exp.trials.num_rows == 2 and any(c.startswith("config.model.") for c in exp.trials.column_names)
    table = json.loads((out / "results.json").read_text())["table"]
    assert table["dg"] == {"target": "c", "sources": ["a", "b"]} and "midg" in table["domain"]


@pytest.mark.parametrize(("sampler", "needle"), [("gp", "--sampler gp: parameter curriculum.start is conditional"),
                                                 ("cmaes", "--sampler cmaes: parameter")])
def test_a_sampler_a_space_does_not_suit_is_refused_before_any_work(sampler, needle, tiny_yaml, tmp_path,
                                                                      capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "plain", "fsrf", "--config", str(tiny_yaml), "--budget", "4",
                 "--sampler", sampler, "--out", str(out)]) == 2
    line = _error(capsys)
    assert needle in line and "space of plain" in line
    assert not out.exists()  # refused before compare.json: another sampler may use the folder


def test_compare_under_dg_reports_each_models_target_domain_rows(tmp_path, capsys) -> None:
    import yaml

    path = tmp_path / "dg.yaml"
    path.write_text(yaml.safe_dump(DG_TINY))
    out = tmp_path / "cmp"
    assert main(["compare", "--models", "midg", "plain", "--config", str(path), "--budget", "0",
                 "--final-seeds", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    table = results["table"]
    assert table["dg"] == {"target": "c", "sources": ["a", "b"]}
    rows = ("c complete", "c random avg", "c modality avg")
    for model in ("midg", "plain"):
        assert tuple(table["domain"][model]) == rows
        assert table["domain"][model]["c random avg"] == table["random"][model]["Average"]
        assert all(r["domain"]["c complete"] == r["patterns"]["complete"] for r in results["runs"][model])
    assert table["paired"]["plain"]["domain/MAE"]["n"] == 2
    text = (out / "compare.md").read_text()
    assert "Comparison on synthetic, DG target c" in text and "held-out target domain c (DG)" in text
    assert "## Domain generalisation (DG): target domain c, trained on a+b" in text and "| c complete |" in text
    assert "\ndomain,c complete,midg,MAE," in (out / "compare.csv").read_text()
