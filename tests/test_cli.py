"""The ``fsrf`` command line, end to end, and its one-line errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from tests_support import TINY

from fsrf.cli import main


@pytest.fixture()
def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 2}}))
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("fsrf: error: ")
    return err[0]


def test_train_then_evaluate(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--out", str(out), "--quiet"]) == 0
    assert "best epoch" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(out / "best.pt")]) == 0
    text = capsys.readouterr().out
    assert "missing rate" in text and "available modalities" in text and "Average" in text
    table = json.loads((out / "eval-test" / "robustness_random.json").read_text())
    assert list(table["rows"]) == [f"{0.1 * i:.1f}" for i in range(10)] + ["Average"]
    patterns = json.loads((out / "eval-test" / "robustness_patterns.json").read_text())
    assert list(patterns["rows"]) == ["{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}", "complete", "Average"]
    assert table["text_protocol"] == patterns["text_protocol"] == "features-approx"  # data.text_input: features
    csv_lines = (out / "eval-test" / "robustness_random.csv").read_text().splitlines()
    assert csv_lines[0].startswith("missing rate,Has0_acc_2") and len(csv_lines) == 12
    assert csv_lines[0].endswith(",text_protocol") and all(r.endswith(",features-approx") for r in csv_lines[1:])
    assert text.count("text protocol: features-approx (rows of precomputed BERT features dropped") == 2
    # same masks, same numbers: evaluation is a pure function of (seed, rate, split)
    first = (out / "eval-test" / "robustness_random.json").read_text()
    assert main(["evaluate", "--checkpoint", str(out / "best.pt")]) == 0
    assert (out / "eval-test" / "robustness_random.json").read_text() == first
    # a finished run is not overwritten; --resume continues it (train.epochs raised)
    assert main(["train", "--config", str(tiny_yaml), "--out", str(out), "--quiet"]) == 2
    assert "already holds a run" in _error_line(capsys)
    assert main(["train", "--config", str(tiny_yaml), "--out", str(out), "--quiet", "--resume",
                 "--set", "train.epochs=3"]) == 0
    assert len((out / "history.jsonl").read_text().splitlines()) == 3


def test_train_without_a_terminal_prints_a_start_line_and_one_line_per_epoch(
    tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--config", str(tiny_yaml), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err  # captured: not a terminal, as in a log file or a pipe
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("fsrf train: model fsrf (") and "parameters) on synthetic (train " in lines[0]
    assert [ln.split(":")[0] for ln in lines[1:]] == ["epoch 1/2", "epoch 2/2"]
    assert main(["train", "--config", str(tiny_yaml), "--out", str(tmp_path / "q"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "best epoch" in captured.out
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(tiny_yaml), "--out", str(tmp_path / "qv"), "-q", "-v"])
    assert exit_.value.code == 2


def test_bad_config_key(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", str(tiny_yaml), "--out", str(tmp_path / "r"), "--set", "model.homoo=1"])
    assert code == 2 and "model.homoo" in _error_line(capsys)


def test_missing_data_file(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", str(tiny_yaml), "--out", str(tmp_path / "r"), "--data", str(tmp_path / "no.pkl")])
    assert code == 2 and "no.pkl" in _error_line(capsys)


def test_malicious_data_file_is_refused(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pkl"
    bad.write_bytes(pickle.dumps({"train": Exploit()}))
    code = main(["train", "--config", str(tiny_yaml), "--out", str(tmp_path / "r"), "--data", str(bad),
                 "--set", "data.dataset=mosi"])
    assert code == 2 and "refusing to unpickle" in _error_line(capsys)
    assert not marker.exists()


def test_resume_without_a_run(tiny_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", str(tiny_yaml), "--out", str(tmp_path / "empty"), "--resume"])
    assert code == 2 and "nothing to resume" in _error_line(capsys)


def test_evaluate_rejects_a_non_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "best.pt"
    fake.write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(fake)]) == 2
    assert "best.pt" in _error_line(capsys)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in _error_line(capsys)


def test_real_dataset_without_data_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = Path(__file__).resolve().parents[1] / "configs" / "mosi.yaml"
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "--data" in _error_line(capsys)


def test_a_checkpoint_with_foreign_objects_is_refused_in_one_whole_sentence(tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "x", "payload": Path("/etc/passwd")}, evil)  # a pickled object beyond tensors
    assert main(["evaluate", "--checkpoint", str(evil)]) == 2
    line = _error_line(capsys)
    assert "evil.pt: refused: the file holds Python objects beyond tensors" in line
    assert line.endswith("so it was not written by fsrf or was altered")  # a whole sentence, not cut


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_a_one_line_error(
    tiny_yaml: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--config", str(tiny_yaml), "--out", str(out), "--quiet"]) == 0
    state = torch.load(out / "best.pt", weights_only=True)
    key = next(k for k, v in state["model"].items() if v.dim() == 2)
    state["model"][key] = torch.zeros(3, 3)
    torch.save(state, out / "edited.pt")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "edited.pt")]) == 2
    line = _error_line(capsys)
    assert f"edited.pt: the weights do not fit the model its stored config builds (1 tensor(s) of another shape, e.g. {key} (3, 3) in the file" in line


def test_version_and_the_tune_subcommand_name_itself(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("fsrf-tune ") and ", torch " in line and ", Python 3." in line
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert capsys.readouterr().out.startswith("usage: fsrf tune ")
