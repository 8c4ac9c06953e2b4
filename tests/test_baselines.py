"""The defining property of each of the field's reference systems."""

from __future__ import annotations

import pytest
import torch

from fsrf import MODALITIES, Config, with_overrides
from fsrf._rng import isolated_rng
from fsrf.model import build_model
from fsrf.model.zoo.tfn import tensor_fusion


def _inputs(config: Config, batch: int = 4):
    g = torch.Generator().manual_seed(0)
    dims, lens = config.data.dims(), config.data.lengths()
    x = {m: torch.randn(batch, lens[m], dims[m], generator=g) for m in dims}
    valid = {m: torch.ones(batch, lens[m], dtype=torch.bool) for m in dims}
    return x, valid


def test_tfn_fusion_holds_every_unimodal_bimodal_and_trimodal_product() -> None:
    g = torch.Generator().manual_seed(1)
    a, v, t = torch.randn(2, 3, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 5, generator=g)
    z = tensor_fusion(a, v, t).view(2, 4, 5, 6)
    assert tensor_fusion(a, v, t).shape == (2, 4 * 5 * 6)
    assert torch.allclose(z[:, 0, 0, 0], torch.ones(2))  # the constant
    assert torch.allclose(z[:, 1:, 0, 0], a) and torch.allclose(z[:, 0, 1:, 0], v) and torch.allclose(z[:, 0, 0, 1:], t)
    assert torch.allclose(z[:, 1:, 1:, 0], a[:, :, None] * v[:, None, :])
    assert torch.allclose(z[:, 1:, 1:, 1:], a[:, :, None, None] * v[:, None, :, None] * t[:, None, None, :])


def test_tfn_size_and_output_range_follow_the_dataset() -> None:
    mosi = with_overrides(Config(), {"model.name": "tfn"})
    assert mosi.model.fusion_size() == (32 + 1) * (128 + 1) * (32 + 1)
    sims = with_overrides(Config(), {"data.dataset": "sims", "model.name": "tfn"})
    assert sims.model.output_range == 1.0 and sims.model.text_out == 256
    with isolated_rng(0):
        model = build_model(sims).eval()
    x, valid = _inputs(sims)
    pred = model({m: 100 * v for m, v in x.items()}, valid).pred
    assert bool((pred.abs() <= 1.0).all())


def test_lf_dnn_concatenates_and_a_missing_modality_averages_to_zero() -> None:
    config = with_overrides(Config(), {"model.name": "lf_dnn"})
    with isolated_rng(0):
        model = build_model(config).eval()
    x, valid = _inputs(config)
    out = model(x, valid)
    assert out.fused.shape == (4, 256 + 16 + 128)
    gone = dict(x, audio=torch.zeros_like(x["audio"]))
    audio_zero = model.unimodal.audio(torch.zeros(4, config.data.audio_dim))
    assert torch.allclose(model(gone, valid).fused[:, 256:272], audio_zero)


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def test_misa_orthogonality_is_zero_for_orthogonal_parts_and_positive_for_equal_ones() -> None:
    from fsrf.model.zoo.misa import diff_loss

    h = _hadamard(8)  # columns 1.. are centred and mutually orthogonal; every row has the same norm
    assert diff_loss(h[:, 1:4], h[:, 4:7]).item() < 1e-10
    assert diff_loss(h[:, 1:4], h[:, 1:4]).item() > 0.01


def test_misa_reads_audio_beyond_the_text_length_only_without_mmsa_quirk() -> None:
    for quirk in (False, True):
        config = with_overrides(Config(), {"model.name": "misa", "model.text_lengths_for_av": quirk})
        with isolated_rng(0):
            model = build_model(config).eval()
        x, valid = _inputs(config)
        valid["text"][:, 10:] = False  # 10 text tokens; audio has 40 frames
        late = dict(x, audio=x["audio"].clone())
        late["audio"][:, 20:] += 5.0
        moved = not torch.allclose(model(x, valid).pred, model(late, valid).pred)
        assert moved != quirk


def test_misa_logs_its_three_terms_with_mmsa_weights_per_dataset() -> None:
    mosei = with_overrides(Config(), {"data.dataset": "mosei", "model.name": "misa"})
    assert mosei.model.weights() == {"sim": 0.8, "diff": 0.3, "recon": 1.0} and mosei.model.dropout == 0.5


def test_lnln_reversal_flips_the_generator_gradient_and_cc_reads_the_text_kept_share() -> None:
    from fsrf.model import TrainBatch
    from fsrf.model.zoo.lnln import grad_reverse

    x = torch.randn(3, 4, requires_grad=True)
    (grad_reverse(x, 0.5) * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -1.0))

    config = with_overrides(Config(), {"model.name": "lnln", "model.hidden": 32, "model.heads": 2})
    with isolated_rng(0):
        model = build_model(config)
    x, valid = _inputs(config)
    keep = {m: torch.ones_like(v) for m, v in valid.items()}
    keep["text"][:, ::2] = False  # half of every sample's text dropped
    step = model.training_step(TrainBatch(features=x, valid=valid, keep=keep, labels=torch.zeros(4),
                                          complete=x, views=1))
    w = model(x, valid, keep=keep).completeness
    assert step.terms["cc"].item() == pytest.approx(((w - 0.5) ** 2).mean().item(), rel=1e-5)
    # the adversarial term reaches the proxy generator (through the reversal above), not the reconstructor
    step.terms["adv"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.proxy.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.reconstruct.parameters())


@pytest.mark.parametrize("bidirectional", [False, True])
def test_length_lstm_equals_a_packed_lstm_on_variable_lengths(bidirectional: bool) -> None:
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from fsrf.model._rnn import LengthLSTM

    with isolated_rng(3):
        ours = LengthLSTM(5, 7, bidirectional=bidirectional)
        ref = torch.nn.LSTM(5, 7, batch_first=True, bidirectional=bidirectional)
        x = torch.randn(6, 11, 5)
    lengths = torch.tensor([11, 1, 4, 7, 11, 2])
    with torch.no_grad():  # the reference takes our weights, direction by direction
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(ours.forward_rnn, f"{name}_l0"))
            if bidirectional:
                getattr(ref, f"{name}_l0_reverse").copy_(getattr(ours.backward_rnn, f"{name}_l0"))
    out, final = ours(x, lengths)
    packed, (h, _) = ref(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    padded, _ = pad_packed_sequence(packed, batch_first=True, total_length=11)
    valid = (torch.arange(11) < lengths.unsqueeze(1)).unsqueeze(-1)
    assert torch.allclose(final, h.permute(1, 0, 2).flatten(1), atol=1e-5)
    assert torch.allclose(out * valid, padded, atol=1e-5)


# --- HME -------------------------------------------------------------------------------------------


def _hme(tiny_config: Config, neighbours: str = "bank", **model):
    """A small HME (one layer/block everywhere) on the tiny synthetic shapes."""
    config = with_overrides(tiny_config, {"model.name": "hme", "model.hidden": 32, "model.heads": 2,
                                          "model.layers": 1, "model.latent_layers": 1, "model.hyper_depth": 1,
                                          "model.fusion_layers": 1, "model.neighbours": neighbours,
                                          **{f"model.{k}": v for k, v in model.items()}})
    with isolated_rng(0):
        return config, build_model(config)


def _fill_bank(model, config: Config, dataset) -> None:
    from fsrf.model import EpochInfo

    info = EpochInfo(epoch=0, epochs=1, train=dataset.train, device=torch.device("cpu"),
                     batch_size=config.train.eval_batch_size)
    model.eval()
    with torch.no_grad():
        model.on_epoch_end(info)


def test_hme_defaults_per_dataset_and_a_one_line_error_for_an_unknown_neighbour_source() -> None:
    from fsrf import FSRFError, config_from_dict

    mosei = config_from_dict({"data": {"dataset": "mosei"}, "model": {"name": "hme"}}).model
    mosi = config_from_dict({"data": {"dataset": "mosi"}, "model": {"name": "hme"}}).model
    assert (mosi.layers, mosi.latent_layers, mosei.layers, mosei.latent_layers) == (4, 4, 2, 3)
    assert (mosi.neighbours, mosi.threshold, mosi.uncertainty_low, mosi.uncertainty_high) == ("bank", 0.6, 0.2, 1.0)
    with pytest.raises(FSRFError, match=r"^x.yaml: model.neighbours: 'test' is not one of bank, batch$"):
        config_from_dict({"model": {"name": "hme", "neighbours": "test"}}, source="x.yaml")


def test_hme_neighbours_are_the_candidates_at_or_above_the_threshold() -> None:
    from fsrf.model.zoo.hme import enhance

    query = torch.tensor([[1.0, 0.0]])
    pool = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])  # cosines 1, 0.71, 0, -1
    every = torch.ones(1, 4, dtype=torch.bool)
    here, gone = torch.tensor([True]), torch.tensor([False])

    def mean(*rows: int) -> torch.Tensor:
        return pool[list(rows)].mean(dim=0, keepdim=True)

    assert torch.allclose(enhance(query, pool, every, here, 0.6), mean(0, 1))
    assert torch.allclose(enhance(query, pool, every, here, 0.8), mean(0))
    assert torch.allclose(enhance(query, pool, every, here, -1.0), mean(0, 1, 2, 3))
    not_first = torch.tensor([[False, True, True, True]])
    assert torch.allclose(enhance(query, pool, not_first, here, 0.6), mean(1))
    # none at or above the threshold, or an absent query: the mean of all its candidates
    assert torch.allclose(enhance(query, pool, not_first, here, 0.8), mean(1, 2, 3))
    assert torch.allclose(enhance(query, pool, every, gone, 0.6), mean(0, 1, 2, 3))
    assert torch.equal(enhance(query, pool, torch.zeros(1, 4, dtype=torch.bool), here, 0.6), torch.zeros(1, 2))


def test_hme_uncertainty_weights_stay_in_the_published_bounds(tiny_config: Config) -> None:
    from fsrf.model.zoo.hme import inverse_sigma

    sigma = torch.tensor([[1e-6, 1e-6], [100.0, 100.0], [2.0, 2.0]])
    assert torch.allclose(inverse_sigma(sigma, 0.2, 1.0), torch.tensor([1.0, 0.2, 0.5]))
    config, model = _hme(tiny_config, uncertainty_low=0.3, uncertainty_high=0.7)
    assert config.model.uncertainty_low == 0.3 and _hme(tiny_config)[0].model.uncertainty_low == 0.2
    x, valid = _inputs(config, batch=16)
    for train in (True, False):
        zeta = model.train(train)({m: 50 * v for m, v in x.items()}, valid).zeta
        assert zeta.shape == (16, 3) and bool(((zeta >= 0.3) & (zeta <= 0.7)).all())


def test_hme_loss_is_task_plus_weighted_mean_unimodal_and_mean_kl(tiny_config: Config) -> None:
    from fsrf.model import TrainBatch, total_loss

    config, model = _hme(tiny_config)
    assert config.model.weights() == {"vib": 0.8, "kl": 0.01}
    x, valid = _inputs(config, batch=8)
    labels = torch.linspace(-2, 2, 8)
    keep = {m: torch.ones_like(v) for m, v in valid.items()}
    model.eval()  # the VIB reads mu and dropout is off: the step and a forward agree
    step = model.training_step(TrainBatch(features=x, valid=valid, keep=keep, labels=labels, complete=x, views=1))
    out = model(x, valid, keep=keep)
    unimodal = torch.stack([(out.unimodal[:, i] - labels).abs().mean() for i in range(3)]).mean()
    assert step.terms["vib"].item() == pytest.approx(unimodal.item(), rel=1e-5)
    assert step.terms["kl"].item() == pytest.approx(out.kl.mean().item(), rel=1e-5)
    total, _ = total_loss(step, labels, config.model.weights(), task="l1")
    expected = (out.pred - labels).abs().mean() + 0.8 * unimodal + 0.01 * out.kl.mean()
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_hme_bank_predictions_ignore_the_batch_and_in_batch_ones_do_not(tiny_config: Config, tiny_dataset) -> None:
    from fsrf.missing import apply_keep, eval_keep

    test = tiny_dataset.test
    keep = eval_keep(test.valid, rate=0.5, seed=3, split="test")
    x = apply_keep(test.features, keep)

    def first_of(model, rows: list[int]) -> torch.Tensor:
        pick = torch.tensor(rows)
        with torch.no_grad():
            out = model({m: v[pick] for m, v in x.items()}, {m: v[pick] for m, v in test.valid.items()},
                        keep={m: k[pick] for m, k in keep.items()})
        return out.pred[0]

    one, other = [0, *range(1, 16)], [0, *range(40, 55)]  # sample 0 among two different sets of 15
    config, bank = _hme(tiny_config, "bank")
    _fill_bank(bank, config, tiny_dataset)
    assert bank.bank.entries("text").shape == (len(tiny_dataset.train), 32)
    assert torch.allclose(first_of(bank, one), first_of(bank, other), atol=1e-6)
    _, batch = _hme(tiny_config, "batch")
    batch.eval()
    assert (first_of(batch, one) - first_of(batch, other)).abs() > 1e-4


def test_hme_bank_training_excludes_each_sample_from_its_own_neighbours(tiny_config: Config) -> None:
    from fsrf.model.zoo.hme import enhance

    config, model = _hme(tiny_config, "bank", threshold=0.9)
    model.eval()
    x, valid = _inputs(config, batch=8)
    with torch.no_grad():
        pooled = model.pooled(x, valid)
        model.bank.fill(pooled)  # the bank holds these very samples, so each is its own nearest entry
        index = torch.arange(8)
        excluded = model(x, valid, index=index).enhanced
        included = model(x, valid).enhanced
    present, others = torch.ones(8, dtype=torch.bool), ~torch.eye(8, dtype=torch.bool)
    for m in MODALITIES:
        assert torch.allclose(excluded[m], enhance(pooled[m], pooled[m], others, present, 0.9), atol=1e-6)
        assert not torch.allclose(excluded[m], included[m], atol=1e-4)


def test_hme_bank_survives_a_checkpoint_and_evaluation_reads_it(tiny_config: Config, tiny_dataset, tmp_path) -> None:
    from fsrf import load_checkpoint, train
    from fsrf.model.zoo.hme import NeighbourBank

    config, _ = _hme(tiny_config, "bank")
    train(with_overrides(config, {"train.epochs": 1}), dataset=tiny_dataset, out_dir=tmp_path, progress=False,
          tensorboard=False)
    state = load_checkpoint(tmp_path / "best.pt")
    saved = state["model"]["bank._extra_state"]
    assert {m: tuple(v.shape) for m, v in saved.items()} == {m: (len(tiny_dataset.train), 32) for m in MODALITIES}
    with isolated_rng(1):
        model = build_model(config)
    model.load_state_dict(state["model"])
    model.eval()
    test = tiny_dataset.test
    with torch.no_grad():
        pred = model(test.features, test.valid).pred
    assert all(torch.equal(model.bank.entries(m), saved[m]) for m in MODALITIES)
    # it is the bank of the checkpoint's weights: rebuilding it from them changes nothing
    _fill_bank(model, config, tiny_dataset)
    assert all(torch.allclose(model.bank.entries(m), saved[m], atol=1e-5) for m in MODALITIES)
    with torch.no_grad():
        assert torch.allclose(model(test.features, test.valid).pred, pred, atol=1e-5)
        model.bank = NeighbourBank(32)  # without it, the same weights predict otherwise
        assert not torch.allclose(model(test.features, test.valid).pred, pred, atol=1e-4)


def test_hme_in_batch_evaluation_batches_are_validations(tiny_config: Config, tmp_path) -> None:
    """With in-batch neighbours, ``fsrf evaluate`` runs the split in order in batches of the
    checkpoint's train.eval_batch_size, so it reproduces validation's numbers."""
    import json

    import yaml

    from fsrf import config_to_dict
    from fsrf._constants import rate_key
    from fsrf.cli import main

    config, _ = _hme(tiny_config, "batch")
    path = tmp_path / "hme.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(with_overrides(
        config, {"train.epochs": 1, "train.eval_batch_size": 40, "missing.eval_seed": 1111})), sort_keys=False))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    history = json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[-1])
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split", "valid",
                 "--device", "cpu"]) == 0
    rows = json.loads((tmp_path / "run" / "eval-valid" / "robustness_random.json").read_text())["rows"]
    for rate in tiny_config.missing.valid_rates:
        assert rows[f"{rate:.1f}"]["MAE"] == pytest.approx(history[rate_key("valid", rate, "MAE")], rel=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hme_bank_follows_the_model_to_the_gpu_and_trains_there_in_bf16(tiny_config: Config, tiny_dataset,
                                                                         tmp_path) -> None:
    import math

    from fsrf import train

    config, model = _hme(tiny_config, "bank")
    _fill_bank(model, config, tiny_dataset)
    test = tiny_dataset.test
    with torch.no_grad():
        on_cpu = model(test.features, test.valid).pred
    for load_first in (True, False):  # the checkpoint read before and after the move
        with isolated_rng(1):
            gpu = build_model(config)
        if load_first:
            gpu.load_state_dict(model.state_dict())
        gpu.cuda().eval()
        if not load_first:
            gpu.load_state_dict(model.state_dict())
        assert all(gpu.bank.entries(m).is_cuda for m in MODALITIES)
        with torch.no_grad():
            pred = gpu({m: v.cuda() for m, v in test.features.items()}, {m: v.cuda() for m, v in test.valid.items()}).pred
        assert torch.allclose(pred.cpu(), on_cpu, atol=1e-3)
    result = train(with_overrides(config, {"train.epochs": 1, "train.device": "cuda", "train.precision": "bf16"}),
                   dataset=tiny_dataset, out_dir=tmp_path, progress=False, tensorboard=False)
    assert math.isfinite(result.best_objective)
# --- CyIN -----------------------------------------------------------------------------------


def _cyin(**model):
    return with_overrides(Config(), {"model.name": "cyin", "model.hidden": 32, "model.heads": 2,
                                     **{f"model.{k}": v for k, v in model.items()}})


def _cyin_batch(config: Config, keep: dict, batch: int = 6):
    from fsrf.missing import apply_keep
    from fsrf.model import TrainBatch

    x, valid = _inputs(config, batch)
    labels = torch.linspace(-2.0, 2.0, batch)
    return TrainBatch(features=apply_keep(x, keep), valid=valid, keep=keep, labels=labels, complete=x, views=1)


def _whole(valid: dict, gone: dict) -> dict:
    """Keep masks that drop modality m wholly from the samples ``gone[m]`` lists."""
    keep = {m: torch.ones_like(v) for m, v in valid.items()}
    for m, rows in gone.items():
        keep[m][rows] = False
    return keep


def test_cyin_text_grid_pools_each_modality_over_equal_shares_of_its_valid_frames() -> None:
    from fsrf.model.zoo.cyin import text_grid_pool

    x = torch.arange(8.0).view(1, 8, 1).repeat(2, 1, 1)  # frame t holds t
    valid = torch.tensor([[True] * 6 + [False] * 2, [True] * 2 + [False] * 6])
    grid = torch.tensor([[True] * 3 + [False] * 2, [True] * 4 + [False]])
    out = text_grid_pool(x, valid, grid).squeeze(-1)
    assert out.tolist() == [[0.5, 2.5, 4.5, 0.0, 0.0],  # 6 frames onto 3 words: pairs; padding 0
                            [0.0, 0.0, 1.0, 1.0, 0.0]]  # 2 frames onto 4 words: each frame twice
    same = torch.ones(1, 5, dtype=torch.bool)  # as many frames as words: each word keeps its frame
    assert torch.equal(text_grid_pool(x[:1, :5], same, same), x[:1, :5])


def test_cyin_translation_term_is_off_in_stage_one_which_reads_the_complete_batch() -> None:
    from fsrf.model import EpochInfo
    from fsrf.model.zoo.cyin import training_stage

    assert [training_stage(e, 50, 0.1) for e in range(7)] == [1] * 5 + [2] * 2  # the paper's 1:9 of 50
    assert [training_stage(e, 10, 0.3) for e in range(5)] == [1, 1, 1, 2, 2]
    assert training_stage(0, 3, 0.1) == 2 and training_stage(0, 10, 0.0) == 2
    config = _cyin()
    with isolated_rng(0):
        model = build_model(config)
    assert model.stage == 2  # outside the trainer (no hook): the whole loss
    valid = _inputs(config, 6)[1]
    view = _cyin_batch(config, _whole(valid, {"audio": [0, 1, 2], "vision": [2]}))
    complete = _cyin_batch(config, _whole(valid, {}))

    def step(batch):
        with isolated_rng(0):
            return model.training_step(batch)

    model.on_epoch_start(EpochInfo(epoch=0, epochs=10, train=None, device=torch.device("cpu"), batch_size=8))
    assert model.stage == 1
    first = step(view)
    assert set(first.terms) == {"tib", "lib"}
    assert torch.equal(first.preds[0], step(complete).preds[0])  # stage 1 ignores the view's drops
    model.on_epoch_start(EpochInfo(epoch=1, epochs=10, train=None, device=torch.device("cpu"), batch_size=8))
    second = step(view)
    assert model.stage == 2 and set(second.terms) == {"tib", "lib", "tran"}
    assert not torch.equal(second.preds[0], first.preds[0])  # stage 2 reads the view
    assert config.model.weights() == {"tib": 1 / 32, "lib": 1 / 32, "tran": 1.0}
    mosei = with_overrides(Config(), {"data.dataset": "mosei", "model.name": "cyin"}).model
    assert mosei.weights() == {"tib": 1 / 4, "lib": 1 / 4, "tran": 5.0} and mosei.stage1_fraction == 0.3


def test_cyin_stage_comes_out_right_after_a_resume(tmp_path) -> None:
    from tests_support import TINY

    from fsrf import config_from_dict, train
    from fsrf._constants import loss_key

    raw = {**TINY, "data": {**TINY["data"], "synthetic_train": 64, "synthetic_valid": 32, "synthetic_test": 32},
           "model": {"name": "cyin", "hidden": 32, "heads": 2, "stage1_fraction": 0.7},
           "train": {**TINY["train"], "epochs": 3}}
    config = config_from_dict(raw)  # 0.7 * 3 = 2.1: epochs 1 and 2 in stage 1, epoch 3 in stage 2
    full = train(config, out_dir=tmp_path / "full", tensorboard=False)

    class Stop(Exception):
        pass

    def stop(record, checkpoint):
        raise Stop

    with pytest.raises(Stop):  # interrupted after its first epoch, then resumed in stage 1
        train(config, out_dir=tmp_path / "cut", report=stop, tensorboard=False)
    resumed = train(config, out_dir=tmp_path / "cut", resume_from=tmp_path / "cut" / "last.pt", tensorboard=False)
    assert [loss_key("tran") in row for row in resumed.history] == [False, False, True]
    assert [row["objective"] for row in resumed.history] == [row["objective"] for row in full.history]


def test_cyin_missing_latent_is_the_sum_of_the_translations_from_the_present_ones() -> None:
    from fsrf.missing import apply_keep

    config = _cyin()
    x, valid = _inputs(config, 6)
    keep = _whole(valid, {"audio": [1, 2, 3], "vision": [2, 3], "text": [3]})
    keep["audio"][4, ::2] = False  # partly kept: encoded from what is left
    outs = {}
    for combine in ("sum", "mean"):
        with isolated_rng(0):
            model = build_model(with_overrides(config, {"model.combine": combine})).eval()
        with torch.no_grad():
            outs[combine] = model(apply_keep(x, keep), valid, keep=keep)
    out, own, latent = outs["sum"], outs["sum"].own, outs["sum"].latent
    with torch.no_grad():
        def gamma(s, t, row):
            return model.translate(s, t, own[s][row : row + 1])[0]

        assert torch.allclose(latent["audio"][1], gamma("text", "audio", 1) + gamma("vision", "audio", 1), atol=1e-5)
        assert torch.allclose(outs["mean"].latent["audio"][1], latent["audio"][1] / 2, atol=1e-5)
        assert torch.allclose(latent["audio"][2], gamma("text", "audio", 2), atol=1e-5)
        assert torch.allclose(latent["vision"][2], gamma("text", "vision", 2), atol=1e-5)
    assert out.replaced.tolist() == [[False] * 3, [False, True, False], [False, True, True],
                                     [False] * 3, [False] * 3, [False] * 3]  # sample 3: nothing to translate from
    for m in ("text", "audio", "vision"):
        kept = ~out.replaced[:, ("text", "audio", "vision").index(m)]
        assert torch.equal(latent[m][kept], own[m][kept])


def test_cyin_relative_errors_ignore_scale() -> None:
    from fsrf.model.zoo.cyin import masked_relative_mse

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 5, 3, generator=g), torch.randn(4, 5, 3, generator=g)
    mask = torch.rand(4, 5, generator=g) > 0.3
    value, counted = masked_relative_mse(pred, target, mask)
    assert counted == 1.0 and value.item() == pytest.approx(masked_relative_mse(0.01 * pred, 0.01 * target, mask)[0].item())
    assert masked_relative_mse(pred, target, torch.zeros_like(mask))[1] == 0.0  # nothing to compare: not counted
    noisy = target + torch.randn(4, 5, 3, generator=g)  # a sampled latent around its mean ``target``
    value = masked_relative_mse(pred, target, mask, spread_of=noisy)[0].item()
    assert value == pytest.approx(masked_relative_mse(0.01 * pred, 0.01 * target, mask, spread_of=0.01 * noisy)[0].item())
    assert value < masked_relative_mse(pred, target, mask)[0].item()  # the noise widens the spread


def test_cyin_ib_terms_are_not_won_by_shrinking_the_representations() -> None:
    """F_m scaled by 0.01 with E_m and the decoders compensating: the IB terms stay, their plain MSE falls 10^4-fold."""
    config = _cyin()
    with isolated_rng(0):
        model = build_model(config)
    batch = _cyin_batch(config, _whole(_inputs(config, 6)[1], {"audio": [0, 1], "vision": [1]}))

    def run():
        with isolated_rng(0):
            out = model(batch.features, batch.valid, keep=batch.keep)
        with isolated_rng(0):
            return out, model.training_step(batch).terms

    before, terms = run()
    with torch.no_grad():
        for m in ("text", "audio", "vision"):
            model.encoder_norm[m].weight.mul_(0.01)
            model.encoder_norm[m].bias.mul_(0.01)
            model.ib_encoder[m][0].weight.mul_(100.0)
        model.ib_decoder.layers[-1].weight.mul_(0.01)
        model.ib_decoder.layers[-1].bias.mul_(0.01)
    after, shrunk = run()
    assert torch.allclose(after.encoded["text"], 0.01 * before.encoded["text"], atol=1e-6)
    assert torch.allclose(after.pred, before.pred, atol=1e-4)
    for name in ("tib", "lib", "tran"):
        assert shrunk[name].item() == pytest.approx(terms[name].item(), rel=1e-3)


def test_cyin_training_terms_stay_finite_when_modalities_are_wholly_missing() -> None:
    config = _cyin()
    with isolated_rng(0):
        model = build_model(config)
    valid = _inputs(config, 6)[1]
    for gone in ({"audio": list(range(6))},  # audio gone from the whole batch
                 {"audio": list(range(6)), "vision": [0, 1, 2]},  # and text alone in half of it
                 {"text": [0], "audio": [0], "vision": [0]}):  # one sample with nothing at all
        model.zero_grad()
        with isolated_rng(0):
            step = model.training_step(_cyin_batch(config, _whole(valid, gone)))
        assert set(step.terms) == {"tib", "lib", "tran"}
        total = step.preds[0].sum() + sum(step.terms.values())
        assert all(bool(torch.isfinite(v)) for v in step.terms.values()) and bool(torch.isfinite(total))
        total.backward()
        assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    assert step.terms["tran"].item() > 0


def test_cyin_translators_fit_a_full_width_map() -> None:
    """The cascade ends in a full-width transition: a map the w/4 bottleneck alone cannot carry is learnt."""
    from fsrf.model.zoo.cyin import CascadedResidualAutoencoders, masked_relative_mse

    with isolated_rng(0):
        net = CascadedResidualAutoencoders(2, 16, 16, 2, 0.0)
        a = torch.randn(2, 16, 16) / 16**0.5
        x = torch.randn(2, 128, 16)
    y = torch.tanh(torch.bmm(x, a))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    every = torch.ones(1, 128, dtype=torch.bool)
    for _ in range(150):
        loss = sum(masked_relative_mse(net(x)[g : g + 1], y[g : g + 1], every)[0] for g in range(2)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.25
