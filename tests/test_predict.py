"""``fsrf predict`` / :func:`fsrf.load_model`: predictions with ids under any missingness, and the
provenance every run directory and search records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from tests_support import TINY

from fsrf import load_model
from fsrf._run_data import load_dataset
from fsrf.cli import main
from fsrf.evaluate import predict
from fsrf.missing import eval_keep, pattern_keep


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "run"
    config = out.parent / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 2}}))
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_every_sample_with_its_id_label_and_condition(run: Path, capsys) -> None:
    loaded = load_model(run / "best.pt", device="cpu")
    dataset = load_dataset(loaded.config.data)
    test = dataset.test
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "--modalities", "text,audio"]) == 0
    rows = _rows(run / "predictions-test.csv")
    assert [r["id"] for r in rows] == list(test.ids) and {r["condition"] for r in rows} == {"present text+audio"}
    expected = predict(loaded.model, test, keep=pattern_keep(test.valid, ("text", "audio")), batch_size=64,
                       device=torch.device("cpu"))
    assert [float(r["prediction"]) for r in rows] == expected.tolist()  # the same forward as evaluation's
    assert [float(r["label"]) for r in rows] == test.labels.tolist()
    # the random protocol's masks are evaluation's: a pure function of (seed = config's eval_seed, rate, split)
    out = run / "r03.csv"
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "--missing-rate", "0.3", "--out", str(out)]) == 0
    keep = eval_keep(test.valid, rate=0.3, seed=loaded.config.missing.eval_seed, split="test")
    random = predict(loaded.model, test, keep=keep, batch_size=64, device=torch.device("cpu"))
    assert [float(r["prediction"]) for r in _rows(out)] == random.tolist()
    assert torch.equal(loaded.predict(test, missing_rate=0.3), random)
    assert not torch.equal(random, expected)
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "--split", "all", "--out", str(run / "all.csv")]) == 0
    assert [r["split"] for r in _rows(run / "all.csv")].count("train") == len(dataset.train)


@pytest.mark.parametrize(("args", "needle"), [
    (["--missing-rate", "1.5"], "--missing-rate: 1.5 must be in [0, 1)"),
    (["--modalities", "text,smell"], "--modalities: text,smell must name one or more of text, audio, vision"),
    (["--missing-rate", "0.2", "--modalities", "text"], "give one condition, not both"),
])
def test_bad_conditions_are_one_line_errors(run: Path, capsys, args, needle) -> None:
    assert main(["predict", "--checkpoint", str(run / "best.pt"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_a_run_directory_records_versions_git_and_data(run: Path, tmp_path: Path) -> None:
    record = json.loads((run / "provenance.json").read_text())["sessions"]
    assert len(record) == 1
    entry = record[0]
    assert entry["versions"]["torch"] == torch.__version__ and "python" in entry["versions"]
    assert entry["data"]["generated"] == "basic" and "seed" in entry["data"]  # synthetic: what generates it
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        assert len(entry["git"]["commit"]) == 40 and isinstance(entry["git"]["dirty"], bool)
    from fsrf._config import DataConfig
    from fsrf._provenance import data_identity

    data = tmp_path / "data.pkl"
    data.write_bytes(b"abc")
    ident = data_identity(DataConfig(dataset="mosi", path=str(data)))
    assert ident["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" and ident["bytes"] == 3
