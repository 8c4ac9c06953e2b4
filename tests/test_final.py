"""``fsrf final``: seeds trained, evaluated on test under both protocols, aggregated as mean ± std."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tests_support import DG_TINY, TINY

from fsrf.cli import main


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 2}}))
    return path


@pytest.mark.slow
def test_final_writes_the_published_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "final"
    code = main(["final", "--config", str(_config(tmp_path)), "--seeds", "1", "2", "--out", str(out),
                 "--parallel", "serial"])
    assert code == 0
    text = (out / "final.md").read_text()
    assert "± " in text and "| Average |" in text and "| {l,a} |" in text
    assert "text protocol: features-approx" in text
    assert json.loads((out / "robustness_random_mean.json").read_text())["text_protocol"] == "features-approx"
    mean = json.loads((out / "robustness_random_mean.json").read_text())["rows"]
    std = json.loads((out / "robustness_random_std.json").read_text())["rows"]
    assert list(mean) == [f"{0.1 * i:.1f}" for i in range(10)] + ["Average"]
    runs = json.loads((out / "runs.json").read_text())
    assert {r["text_protocol"] for r in runs} == {"features-approx"}
    assert text.count("text protocol: features-approx (rows") == 2  # a line under each table
    maes = [r["random"]["0.3"]["MAE"] for r in runs]
    assert mean["0.3"]["MAE"] == pytest.approx(sum(maes) / 2)
    assert std["0.3"]["MAE"] == pytest.approx(abs(maes[0] - maes[1]) / 2 ** 0.5)
    assert maes[0] != maes[1]  # different seeds, different models
    assert (out / "seed-1" / "best.pt").is_file() and (out / "seed-2" / "best.pt").is_file()
    assert list(pd.read_csv(out / "robustness_patterns_mean.csv").iloc[:, 0])[-2:] == ["complete", "Average"]


def test_final_refuses_repeated_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["final", "--config", str(_config(tmp_path)), "--seeds", "1", "1", "--out", str(tmp_path / "f")]) == 2
    assert "--seeds" in capsys.readouterr().err


@pytest.mark.slow
def test_final_runs_seeds_as_ray_tasks(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tempfile

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ff", dir="/tmp")}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "final"
    run = subprocess.run([sys.executable, "-m", "fsrf.cli", "final", "--config", str(_config(tmp_path)),
                          "--seeds", "3", "4", "--out", str(out), "--parallel", "ray"],
                         cwd=root, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Started a local Ray instance" in run.stderr
    assert [r["seed"] for r in json.loads((out / "runs.json").read_text())] == [3, 4]


@pytest.mark.parametrize("bad, needle", [("-1", "must be >= 0"), ("1.5", "at most 1 or a whole number")])
def test_a_bad_gpus_per_run_is_one_line_before_any_ray_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             bad: str, needle: str) -> None:
    code = main(["final", "--config", str(_config(tmp_path)), "--seeds", "1", "2", "--out", str(tmp_path / "f"),
                 "--gpus-per-run", bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fsrf final: error: --gpus-per-run: ") and needle in err[0]


def test_gpus_per_run_needs_ray_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["final", "--config", str(_config(tmp_path)), "--seeds", "1", "2", "--out", str(tmp_path / "f"),
                 "--parallel", "serial", "--gpus-per-run", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--parallel serial runs no Ray tasks" in err[0]


@pytest.fixture
def ray_without_gpus(monkeypatch: pytest.MonkeyPatch):
    """A local Ray of 2 CPUs and no GPU, in this process (final and compare join it)."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.parametrize("gpus", ["0.25", "1", "2"])
def test_more_gpus_per_run_than_any_node_has_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ray_without_gpus: None, gpus: str
) -> None:
    expected = f"--gpus-per-run: {float(gpus):g} GPUs per seed, but the largest node of the Ray cluster has 0"
    capsys.readouterr()  # what Ray logged while starting
    out = tmp_path / "final"
    code = main(["final", "--config", str(_config(tmp_path)), "--seeds", "1", "2", "--out", str(out),
                 "--gpus-per-run", gpus])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"fsrf final: error: {expected}"]
    assert not (out / "seed-1").exists()  # refused before any training
    code = main(["compare", "--models", "fsrf", "plain", "--config", str(_config(tmp_path)),
                 "--out", str(tmp_path / "compare"), "--gpus-per-run", gpus])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"fsrf compare: error: {expected}"]
    assert not (tmp_path / "compare" / "fsrf").exists()



def test_final_under_dg_reports_the_target_domain_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "dg.yaml"
    config.write_text(yaml.safe_dump(DG_TINY))
    out = tmp_path / "final"
    assert main(["final", "--config", str(config), "--seeds", "1", "2", "--out", str(out), "--parallel", "serial"]) == 0
    text = (out / "final.md").read_text()
    assert "test split of the target domain c (DG)" in text
    assert "## Domain generalisation (DG): target domain c, trained on a+b" in text
    assert all(f"| {row} |" in text for row in ("c complete", "c random avg", "c modality avg"))
    runs = json.loads((out / "runs.json").read_text())
    assert all(r["dg"] == {"target": "c", "sources": ["a", "b"]} for r in runs)
    assert all(r["domain"]["c random avg"] == r["random"]["Average"] for r in runs)
    assert all(r["domain"]["c complete"] == r["patterns"]["complete"] for r in runs)
    mean = json.loads((out / "robustness_domain_mean.json").read_text())
    assert mean["title"] == "target (sources a+b)" and list(mean["rows"]) == ["c complete", "c random avg",
                                                                                "c modality avg"]
    maes = [r["domain"]["c modality avg"]["MAE"] for r in runs]
    assert mean["rows"]["c modality avg"]["MAE"] == pytest.approx(sum(maes) / 2)
    assert (out / "robustness_domain_std.csv").is_file()
