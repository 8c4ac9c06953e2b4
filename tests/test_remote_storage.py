"""``--storage s3://...``: a search against a local S3 endpoint (moto's server on 127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fsrf import load_config
from tuning.store import read_results, read_trials

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def s3_endpoint(monkeypatch: pytest.MonkeyPatch):
    server_mod = pytest.importorskip("moto.server")
    import pyarrow.fs as pafs

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", access_key="test", secret_key="test",
                      region="us-east-1", allow_bucket_creation=True).create_dir("fsrf-bucket")
    yield env
    server.stop()


def _tune(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tune.py"), "--num-cpus", "2", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False, timeout=300)


@pytest.mark.slow
def test_search_with_s3_storage_stores_trials_and_resumes_on_a_new_head(s3_endpoint, tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    home = tmp_path / "home"  # the staging mirror lives under ~/.cache
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": tempfile.mkdtemp(prefix="fs", dir="/tmp")}
    uri = "s3://fsrf-bucket/results"
    run = _tune(["--smoke-test", "--storage", uri, "--name", "s3exp"], env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trials = read_trials(f"{uri}/s3exp")  # read straight from the bucket
    assert trials.num_rows == 4
    results = read_results(f"{uri}/s3exp")
    pairs = list(zip(results.column("trial_id").to_pylist(), results.column("iteration").to_pylist()))
    assert len(pairs) == len(set(pairs)) > 0
    fs, base = pafs.FileSystem.from_uri(f"{uri}/s3exp")
    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector(base, recursive=False))}
    assert {"fsrf_search.json", "best.yaml", "store", "tuner.pkl"} <= names, names
    with fs.open_input_stream(f"{base}/best.yaml") as src:
        (tmp_path / "best.yaml").write_bytes(src.read())
    assert load_config(tmp_path / "best.yaml").train.epochs == 2
    from analysis import load_experiment
    from analysis._leaderboard import leaderboard

    board = leaderboard(load_experiment(f"{uri}/s3exp"), metric="objective", top=4)  # `fsrf analyze s3://...`
    assert len(board) == 4 and board[0]["value"] <= board[-1]["value"]
    # a new head: no local staging at all; --resume finds the experiment in the bucket
    shutil.rmtree(home, ignore_errors=True)
    again = _tune(["--storage", uri, "--name", "s3exp", "--resume"], env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert read_trials(f"{uri}/s3exp").num_rows == 4
