"""Each loss term's defining property: scale invariance, direction of the transfer, recovery."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fsrf import FSRF, Config, with_overrides
from fsrf._rng import isolated_rng
from fsrf.losses import (
    TERMS,
    agreement_loss,
    cmd,
    correlation,
    decorrelation_loss,
    fsrf_loss,
    label_r2_loss,
    mmd,
    needs_two_views,
    relative_mse,
)
from fsrf.missing import apply_keep, pattern_keep

AUXILIARY = tuple(t for t in TERMS if t != "task")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_cmd_of_identical_samples_is_zero_and_positive_otherwise() -> None:
    x = torch.randn(64, 16, generator=_gen())
    assert cmd(x, x.clone()).item() == 0.0
    assert cmd(x, x[torch.randperm(64, generator=_gen(1))]).item() == pytest.approx(0.0, abs=1e-5)
    assert cmd(x, x + 0.5).item() == pytest.approx(0.5 * 4.0, rel=1e-5)  # pure mean shift: ||0.5 * 1_16||
    assert cmd(x, 2.0 * x).item() > 0.1


def test_cmd_matches_misa_definition() -> None:
    x1, x2 = torch.randn(32, 8, generator=_gen(2)), torch.randn(40, 8, generator=_gen(3)) * 1.3
    expected = (x1.mean(0) - x2.mean(0)).norm()
    for k in range(2, 6):
        expected += ((x1 - x1.mean(0)).pow(k).mean(0) - (x2 - x2.mean(0)).pow(k).mean(0)).norm()
    assert torch.allclose(cmd(x1, x2, order=5), expected)


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def test_decorrelation_is_zero_for_uncorrelated_parts_and_one_for_copies() -> None:
    h = _hadamard(64)  # columns past the first: zero-mean and mutually orthogonal over the batch
    a, b = 3.0 * h[:, 1:9], h[:, 9:17]
    assert decorrelation_loss(a, b).item() == pytest.approx(0.0, abs=1e-10)
    assert decorrelation_loss(a[:, :1], 0.01 * a[:, :1]).item() == pytest.approx(1.0, abs=1e-4)
    assert decorrelation_loss(a, a + 0.1 * b).item() > 1e-2


def test_agreement_is_zero_for_parts_equal_up_to_scale_and_one_for_independent() -> None:
    x = torch.randn(256, 8, generator=_gen(4))
    assert agreement_loss(x, 5.0 * x + 2.0).item() == pytest.approx(0.0, abs=1e-4)
    assert agreement_loss(x, torch.randn(256, 8, generator=_gen(5))).item() == pytest.approx(1.0, abs=0.1)


def test_noise_term_reads_any_linear_sentiment_in_the_noise() -> None:
    g = _gen(6)
    y = torch.randn(512, generator=g)
    clean = torch.randn(512, 8, generator=g)
    leaky = clean.clone()
    leaky[:, 3] += y
    assert label_r2_loss(clean, y).item() < 0.03
    assert label_r2_loss(leaky, y).item() > 0.3
    assert label_r2_loss(0.01 * leaky, y).item() == pytest.approx(label_r2_loss(leaky, y).item(), rel=1e-4)


def test_noise_r2_finds_sentiment_hidden_in_a_combination_of_dimensions() -> None:
    g = _gen(12)
    y = torch.randn(512, generator=g)
    w = 10.0 * torch.randn(512, generator=g)
    hidden = torch.stack([w, w + y, torch.randn(512, generator=g)], dim=1)  # x1 - x0 = y: 0.5% of the variance
    assert correlation(hidden, y.unsqueeze(1)).pow(2).mean().item() < 0.01  # each dimension alone looks clean
    assert label_r2_loss(hidden, y).item() > 0.9
    assert label_r2_loss(0.01 * hidden, y).item() == pytest.approx(label_r2_loss(hidden, y).item(), rel=1e-3)
    assert label_r2_loss(torch.randn(512, 3, generator=g), y).item() < 0.02


def test_relative_mse_is_one_minus_r2_and_ignores_scale() -> None:
    target = torch.randn(128, 8, generator=_gen(7))
    assert relative_mse(target.mean(0).expand_as(target), target).item() == pytest.approx(1.0, abs=1e-4)
    pred = target + 0.5 * torch.randn(128, 8, generator=_gen(8))
    assert relative_mse(0.01 * pred, 0.01 * target).item() == pytest.approx(relative_mse(pred, target).item(), rel=1e-4)


def test_mmd_zero_for_identical_and_grows_with_shift() -> None:
    x = torch.randn(50, 8, generator=_gen(9))
    assert mmd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert mmd(x, x + 1.0).item() > mmd(x, x + 0.1).item() > 0.0


def _views(config: Config, batch: int = 16):
    """Two views of one batch: view 0 lacks text on its first half, view 1 lacks audio on its second."""
    with isolated_rng(0):  # parameter init seeded, the global RNG left as it was
        model = FSRF(config)
    dims, lens = config.data.dims(), config.data.lengths()
    g = _gen(10)
    x = {m: torch.randn(batch, lens[m], dims[m], generator=g) for m in dims}
    valid = {m: torch.ones(batch, lens[m], dtype=torch.bool) for m in dims}
    keep0 = {m: torch.ones_like(v) for m, v in valid.items()}
    keep1 = {m: torch.ones_like(v) for m, v in valid.items()}
    half = batch // 2
    keep0["text"][:half] = False
    keep1["audio"][half:] = False
    keep = {m: torch.cat([keep0[m], keep1[m]]) for m in dims}
    xs = apply_keep({m: torch.cat([x[m], x[m]]) for m in dims}, keep)
    out = model(xs, {m: torch.cat([v, v]) for m, v in valid.items()}, keep=keep, recon=True)
    return model, out.chunk(2), torch.randn(batch, generator=g)


def _scaled(view, factor: float):
    parts = ("encoded", "homo", "hetero", "noise", "recovered", "used", "recon")
    return dataclasses.replace(view, **{p: {m: factor * v for m, v in getattr(view, p).items()} for p in parts})


@pytest.mark.parametrize("term", AUXILIARY)
def test_shrinking_the_representations_does_not_lower_any_term(term: str) -> None:
    config = with_overrides(Config(), {"optim.batch_size": 16})
    _, views, labels = _views(config)
    _, terms = fsrf_loss(views, labels, config.model)
    _, shrunk = fsrf_loss([_scaled(v, 0.01) for v in views], labels, config.model)
    assert terms[term].item() > 0
    assert shrunk[term].item() == pytest.approx(terms[term].item(), rel=2e-3, abs=1e-5)


def test_every_term_is_reported_and_total_is_their_weighted_sum() -> None:
    config = Config()
    _, views, labels = _views(config)
    total, terms = fsrf_loss(views, labels, config.model)
    assert set(terms) == {*TERMS, "total"}
    expected = terms["task"] + sum(getattr(config.model, k) * terms[k] for k in TERMS if k != "task")
    assert torch.allclose(total.detach(), expected)


def test_zero_weight_skips_the_term() -> None:
    config = with_overrides(Config(), {"model.homo": 0.0, "model.distill": 0.0, "model.align": 0.0})
    assert not needs_two_views(config.model)
    _, views, labels = _views(config)
    _, terms = fsrf_loss(views[:1], labels, config.model)
    assert "homo" not in terms and "distill" not in terms and "align" not in terms


def _distill_only() -> Config:
    return with_overrides(Config(), {f"model.{k}": 0.0 for k in AUXILIARY if k != "distill"})


def test_distillation_flows_from_the_view_that_has_the_modality_to_the_one_that_lacks_it() -> None:
    config = _distill_only()
    _, views, labels = _views(config)
    a, b = (dataclasses.replace(v, pred=v.pred.detach()) for v in views)  # representations only
    total, _ = fsrf_loss([a, b], labels, config.model)
    student, never, teacher = torch.autograd.grad(total, [a.used["text"], b.used["text"], b.homo["text"]],
                                                  allow_unused=True)
    half = len(labels) // 2
    # view 0 lacks text on its first half: there view 1 is the (stop-gradient) teacher, view 0 learns
    assert bool(a.absent[:half, 0].all()) and not bool(b.absent[:, 0].any())
    assert student[:half].abs().sum() > 0 and student[half:].abs().sum() == 0  # ties transfer nothing
    for grad in (never, teacher):
        assert grad is None or grad.abs().sum() == 0


@pytest.mark.parametrize(("margin", "transfers"), [(0.1, True), (0.25, False)])
def test_distillation_transfers_only_where_the_teacher_has_more_than_the_margin(margin: float, transfers: bool) -> None:
    config = with_overrides(_distill_only(), {"model.distill_margin": margin})
    _, views, labels = _views(config)
    half = len(labels) // 2
    presence = views[0].presence.clone()
    presence[:half, 0] = 0.8  # view 0 keeps 80% of the text on its first half, view 1 all of it
    a = dataclasses.replace(views[0], pred=views[0].pred.detach(), presence=presence)
    b = dataclasses.replace(views[1], pred=views[1].pred.detach())
    total, _ = fsrf_loss([a, b], labels, config.model)
    (student,) = torch.autograd.grad(total, [a.used["text"]], allow_unused=True)
    moved = student is not None and bool(student[:half].abs().sum() > 0)
    assert moved == transfers


def test_prediction_distillation_runs_both_ways_with_a_stop_gradient_teacher() -> None:
    config = _distill_only()
    _, views, labels = _views(config)
    pa = views[0].pred.detach().requires_grad_(True)
    pb = views[1].pred.detach().requires_grad_(True)
    va, vb = dataclasses.replace(views[0], pred=pa), dataclasses.replace(views[1], pred=pb)
    total, _ = fsrf_loss([va, vb], labels, config.model)
    ga, gb = torch.autograd.grad(total, [pa, pb])
    n = len(labels)
    # the task term's own gradient (mean L1, averaged over two views) removed: what is left is distill's
    ga, gb = ga - torch.sign(pa - labels) / n / 2, gb - torch.sign(pb - labels) / n / 2
    half = n // 2
    # view 0 lacks text on the first half (view 1 teaches); view 1 lacks audio on the second (view 0 teaches)
    assert ga[:half].abs().min() > 0 and ga[half:].abs().max() < 1e-7
    assert gb[half:].abs().min() > 0 and gb[:half].abs().max() < 1e-7


def test_recovery_path_is_used_only_when_a_modality_is_absent() -> None:
    config = Config()
    with isolated_rng(0):
        model = FSRF(config).eval()
    dims, lens = config.data.dims(), config.data.lengths()
    g = _gen(11)
    x = {m: torch.randn(4, lens[m], dims[m], generator=g) for m in dims}
    valid = {m: torch.ones(4, lens[m], dtype=torch.bool) for m in dims}
    complete = model(x, valid).pred
    keep = pattern_keep(valid, ("audio", "vision"))
    partial = model(apply_keep(x, keep), valid, keep=keep).pred
    with torch.no_grad():
        for p in model.recover["text"].parameters():
            p.add_(0.5)
    assert torch.equal(model(x, valid).pred, complete)  # text present: r_text is not read
    assert not torch.allclose(model(apply_keep(x, keep), valid, keep=keep).pred, partial)


def test_the_teacher_modes_choose_their_pairs() -> None:
    from fsrf.losses import needs_teacher, transfer_pairs

    config = Config()
    _, views, labels = _views(config)
    complete = views[1]  # stands in for the complete input's output
    assert transfer_pairs(views, None, mode="views") == [(views[0], views[1]), (views[1], views[0])]
    assert transfer_pairs(views, complete, mode="complete") == [(complete, views[0]), (complete, views[1])]
    assert len(transfer_pairs(views, complete, mode="both")) == 4
    assert not needs_teacher(config.model) and needs_two_views(config.model)
    solo = with_overrides(config, {"model.teacher": "complete"}).model
    assert needs_teacher(solo) and not needs_two_views(solo)
    _, terms = fsrf_loss(views[:1], labels, solo, teacher=complete)
    assert terms["distill"].item() > 0


def test_a_complete_teacher_trains(tiny_config: Config, tmp_path) -> None:
    from fsrf import train

    config = with_overrides(tiny_config, {"model.teacher": "both", "train.epochs": 1, "curriculum.kind": "constant",
                                          "curriculum.end": 0.5})
    result = train(config, tensorboard=False)
    assert result.history[-1]["train/loss/distill"] > 0
