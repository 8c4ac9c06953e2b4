"""midg and the domain-generalisation (DG) protocol: assembly, config errors, per-domain
projections, the V-REx term, the synthetic shift and the DG table of ``fsrf evaluate``."""

from __future__ import annotations

import json

import mmsa_files
import numpy as np
import pytest
import torch

from fsrf import MODALITIES, FSRFError, config_from_dict
from fsrf._rng import isolated_rng
from fsrf._run_data import load_dataset
from fsrf.cli import main
from fsrf.data import load_mmsa
from fsrf.model import TrainBatch, build_model
from fsrf.model.zoo.midg import domain_risk_variance

DIMS = {"domain_text_dims": [32, 24, 28], "domain_audio_dims": [12, 8, 10], "domain_vision_dims": [16, 12, 14]}
DG = {
    "data": {"domains": ["a", "b", "c"], "target": "c", **DIMS, "text_len": 8, "audio_len": 10, "vision_len": 10,
             "synthetic_train": 40, "synthetic_valid": 16, "synthetic_test": 24},
    "model": {"name": "midg", "hidden": 16, "heads": 2, "experts": 3, "adapter_dim": 4},
    "missing": {"valid_rates": [0.0, 0.5]},
    "optim": {"batch_size": 16},
    "train": {"epochs": 1, "num_threads": 1},
}


def _config(**data):
    return config_from_dict({**DG, "data": {**DG["data"], **data}}, source="test")


@pytest.fixture(scope="module")
def dg():
    config = _config()
    return config, load_dataset(config.data)


def test_assembly_pads_to_the_widest_domain_records_domains_and_keeps_the_target_out(dg) -> None:
    _, data = dg
    assert data.name == "synthetic" and data.train.dims() == {"text": 32, "audio": 12, "vision": 16}
    assert data.train.extras["domain"].bincount().tolist() == [40, 40]  # sources a, b only
    assert data.valid.extras["domain"].bincount().tolist() == [16, 16]
    assert data.test.extras["domain"].tolist() == [2] * 24 and data.test.extras["domain"].dtype == torch.long
    assert all(i.startswith(("a/", "b/")) for i in data.train.ids + data.valid.ids)
    assert all(i.startswith("c/") for i in data.test.ids)
    assert not set(data.test.ids) & set(data.train.ids + data.valid.ids)
    for split in (data.train, data.test):
        for m in MODALITIES:
            own = torch.tensor(DIMS[f"domain_{m}_dims"])[split.extras["domain"]]  # (N,)
            columns = torch.arange(split.features[m].shape[-1])
            beyond = columns[None, :] >= own[:, None]  # (N, D) padded columns
            assert float(split.features[m].abs().amax(dim=1)[beyond].max()) == 0.0
            assert float(split.features[m].abs().amax(dim=1)[~beyond].min()) > 0.0
            assert bool((split.features[m][~split.valid[m]] == 0).all())


def test_synthetic_domains_plant_a_label_cue_that_flips_sign_from_the_first_to_the_last_domain() -> None:
    config = _config(synthetic_train=300, target="a", vision_len=4)
    data = load_dataset(config.data)  # train: domains b (cue 0) and c (cue -1); test: a (cue +1)
    flat = _config(synthetic_train=300, target="a", vision_len=4, domain_shift=0.0)
    plain = load_dataset(flat.data)

    def cue(split, k):
        rows = split.extras["domain"] == k
        x = split.features["vision"][rows].mean(dim=1)[:, :12].numpy()
        return x, split.labels[rows].numpy()

    x_c, y_c = cue(data.train, 2)
    w = np.linalg.lstsq(np.c_[x_c, np.ones(len(x_c))], y_c, rcond=None)[0]
    x_a, y_a = cue(data.test, 0)
    corr_a = np.corrcoef(np.c_[x_a, np.ones(len(x_a))] @ w, y_a)[0, 1]
    x_c0, y_c0 = cue(plain.train, 2)
    w0 = np.linalg.lstsq(np.c_[x_c0, np.ones(len(x_c0))], y_c0, rcond=None)[0]
    x_a0, y_a0 = cue(plain.test, 0)
    corr_a0 = np.corrcoef(np.c_[x_a0, np.ones(len(x_a0))] @ w0, y_a0)[0, 1]
    assert corr_a < -0.3  # the vision read-out learnt on domain c is reversed on domain a
    assert corr_a0 > 0.2  # without the shift the same read-out transfers


def test_leave_one_dataset_out_over_mmsa_files_uses_the_target_metrics(tmp_path) -> None:
    paths = [mmsa_files.write(tmp_path / f"{n}.pkl", data) for n, data in (
        ("mosi", mmsa_files.mosi_unaligned(seed=0)), ("mosei", mmsa_files.mosi_unaligned(seed=1)),
        ("sims", mmsa_files.sims_unaligned(seed=2)))]
    data = {"dataset": "sims", "domains": ["mosi", "mosei", "sims"], "target": "sims",
            "domain_paths": [str(p) for p in paths], "domain_text_dims": [768] * 3,
            "domain_audio_dims": [5, 5, 33], "domain_vision_dims": [20, 20, 709],
            "text_dim": 768, "audio_dim": 33, "vision_dim": 709, "text_len": 8, "audio_len": 12, "vision_len": 12}
    with pytest.raises(FSRFError, match=r"data.domains: \['mosi', 'mosei', 'sims'\] mix label ranges "
                                        r"\(mosi, mosei: \[-3, 3\]; sims: \[-1, 1\]\): set data.domain_label_rescale"):
        config_from_dict({"data": data}, source="t")
    config = config_from_dict({"data": {**data, "domain_label_rescale": True}}, source="t")
    dataset = load_dataset(config.data)
    assert dataset.name == "sims" and len(dataset.test) == mmsa_files.SPLIT_SIZES["test"]
    # MOSI/MOSEI's labels (steps of 0.2 on [-3, 3]) arrive on SIMS's [-1, 1], the target's untouched
    raw = {"mosi": load_mmsa(paths[0], name="mosi"), "sims": load_mmsa(paths[2], name="sims")}
    mosi_rows = dataset.train.extras["domain"] == 0
    assert torch.allclose(dataset.train.labels[mosi_rows], raw["mosi"].train.labels / 3.0)
    assert raw["mosi"].train.labels.abs().max() > 1.0 >= dataset.train.labels.abs().max()
    assert torch.equal(dataset.test.labels, raw["sims"].test.labels)
    assert "labels x 0.333333" in dataset.source
    assert set(dataset.train.extras["domain"].tolist()) == {0, 1} and len(dataset.train) == 12
    assert dataset.train.dims() == {"text": 768, "audio": 33, "vision": 709}
    wrong = config_from_dict({"data": {**data, "domain_label_rescale": True, "domain_audio_dims": [5, 6, 33]}}, source="t")
    with pytest.raises(FSRFError, match=r"data.domain_audio_dims: config says 6 for domain 'mosei' but .* has 5") as err:
        load_dataset(wrong.data)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("change", "message"), [
    ({"target": "d"}, r"data.target: 'd' is not one of data.domains"),
    ({"domains": ["a"], "target": "a"}, r"data.domains: \['a'\] needs at least two domains"),
    ({"domain_audio_dims": [12, 8]}, r"data.domain_audio_dims: \[12, 8\] has 2 entries, expected one per domain \(3\)"),
    ({"vision_dim": 20}, r"data.vision_dim: 20 must be the largest of data.domain_vision_dims \(16\)"),
    ({"domain_paths": ["x.pkl"] * 3}, r"data.domain_paths: synthetic domains are generated"),
    ({"dataset": "mosi", "domains": ["mosi", "sims", "x"], "target": "x"}, r"data.domains: x: with real data every domain is one of"),
    ({"dataset": "mosi", "domains": ["mosi", "mosei", "sims"], "target": "sims"},
     r"data.dataset: 'mosi' must be the target domain 'sims'"),
    ({"dataset": "sims", "domains": ["mosi", "mosei", "sims"], "target": "sims",
      "domain_paths": ["a.pkl", "b.pkl", "./a.pkl"]},
     r"data.domain_paths: ./a.pkl is the file of both 'mosi' and 'sims': one dataset would be on both sides"),
    ({"domains": [], "target": None}, r"data.domain_text_dims: \(32, 24, 28\) is read only with data.domains"),
    ({"domains": [], "target": None, "domain_text_dims": [], "domain_audio_dims": [], "domain_vision_dims": [],
      "domain_label_rescale": True}, r"data.domain_label_rescale: is read only with data.domains"),
])
def test_bad_dg_configs_are_one_line_errors(change, message) -> None:
    with pytest.raises(FSRFError, match=message) as err:
        _config(**change)
    assert "\n" not in str(err.value) and str(err.value).startswith("test: ")


def test_per_domain_projections_read_only_their_own_columns_and_the_target_only_the_shared_one(dg) -> None:
    config, data = dg
    with isolated_rng(0):
        model = build_model(config).eval()
    assert [model.own[k]["vision"].in_features for k in range(3)] == [16, 12, 14]
    assert model.shared["audio"].in_features == 8 and model.extras == ("domain",)  # the columns all domains have
    padded = build_model(config_from_dict({**DG, "model": {**DG["model"], "shared_input": "padded"}}, source="t"))
    assert padded.shared["audio"].in_features == 12  # every padded column
    batch = data.train.take(torch.tensor([0, 1, 50, 51]))  # two of domain a, two of domain b
    before = model(batch.features, batch.valid, extras=batch.extras).pred
    noisy = {m: x.clone() for m, x in batch.features.items()}
    noisy["vision"][2:, :, 12:] = 5.0  # domain b's padded columns (its own dim is 12)
    assert torch.equal(model(noisy, batch.valid, extras=batch.extras).pred, before)
    noisy["vision"][:2, :, 13] = 5.0  # a column domain a reads
    assert not torch.allclose(model(noisy, batch.valid, extras=batch.extras).pred[:2], before[:2])
    test = data.test.take(torch.arange(4))
    target = model(test.features, test.valid, extras=test.extras).pred
    with torch.no_grad():
        for k in range(3):
            for proj in model.own[k].values():
                proj.weight.normal_()
    after = model(test.features, test.valid, extras=test.extras).pred
    assert torch.equal(after, target)  # the unseen target reads the shared projection only
    assert not torch.equal(model(batch.features, batch.valid, extras=batch.extras).pred, before)


def test_vrex_is_zero_with_one_domain_and_grows_with_the_gap_between_domain_risks(dg) -> None:
    risk = torch.tensor([1.0, 3.0, 2.0, 2.0])
    assert float(domain_risk_variance(risk, torch.zeros(4, dtype=torch.long), 3)) == 0.0
    assert float(domain_risk_variance(risk, torch.tensor([0, 0, 1, 1]), 3)) == 0.0  # equal means
    assert float(domain_risk_variance(risk, torch.tensor([0, 1, 0, 1]), 3)) == pytest.approx(0.25)
    assert float(domain_risk_variance(risk, torch.tensor([0, 2, 0, 2]), 3)) == pytest.approx(0.25)  # absent 1 ignored
    config, data = dg
    with isolated_rng(0):
        model = build_model(config)
    b = data.train.take(torch.tensor([0, 1, 2, 3, 40, 41, 42, 43]))

    def step(domain):
        keep = {m: torch.ones_like(v) for m, v in b.valid.items()}
        with isolated_rng(1):
            return model.training_step(TrainBatch(features=b.features, valid=b.valid, keep=keep, labels=b.labels,
                                                  complete=b.features, views=1, extras={"domain": domain}))

    one = step(torch.zeros(8, dtype=torch.long))
    assert float(one.terms["vrex"].detach()) == 0.0
    two = step(b.extras["domain"])
    risk = (two.preds[0].detach() - b.labels).abs()
    gap = float(risk[:4].mean() - risk[4:].mean())
    assert float(two.terms["vrex"].detach()) == pytest.approx(gap**2 / 4, rel=1e-4, abs=1e-7) and float(two.terms["vrex"].detach()) > 0
    two.terms["vrex"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.experts.parameters())


def test_without_domains_midg_reads_no_side_input_and_its_one_domain_has_no_variance(tiny_dataset) -> None:
    config = config_from_dict({"model": {"name": "midg", "hidden": 16, "heads": 2}, "data": {
        "text_len": 12, "audio_len": 16, "vision_len": 16}}, source="t")
    model = build_model(config)
    assert model.extras == () and model.shared is None and len(model.own) == 1
    b = tiny_dataset.train.take(torch.arange(8))
    keep = {m: torch.ones_like(v) for m, v in b.valid.items()}
    out = model.training_step(TrainBatch(features=b.features, valid=b.valid, keep=keep, labels=b.labels,
                                         complete=b.features, views=1))
    assert float(out.terms["vrex"].detach()) == 0.0 and float(out.terms["balance"].detach()) >= 0.0


def test_dg_training_logs_vrex_and_evaluate_prints_the_dg_table(tmp_path, capsys) -> None:
    config = tmp_path / "dg.yaml"
    config.write_text(json.dumps(DG))  # JSON is YAML
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--quiet"]) == 0
    row = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    assert row["train/loss/vrex"] > 0  # two source domains in every batch
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "domain generalisation (target domain; test split)" in out and "target (sources a+b)" in out
    for row_name in ("c complete", "c random avg", "c modality avg"):
        assert row_name in out
    table = json.loads((run / "eval-test" / "robustness_domain.json").read_text())
    random_avg = json.loads((run / "eval-test" / "robustness_random.json").read_text())["rows"]["Average"]
    assert table["rows"]["c random avg"] == random_avg
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "x"), "--data", "f.pkl"]) == 2
