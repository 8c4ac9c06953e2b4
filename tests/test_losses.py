"""Each loss term's defining property."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fsrf import Config, FSRF, with_overrides
from fsrf._rng import isolated_rng
from fsrf.model._layers import grad_reverse
from fsrf.losses import TERMS, cmd, diff_loss, fsrf_loss, mmd, needs_two_views


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


def test_diff_loss_is_zero_for_orthogonal_parts() -> None:
    # Hadamard columns past the first: zero-mean, mutually orthogonal over the batch, equal row norms
    h = _hadamard(64)
    a, b = 3.0 * h[:, 1:9], h[:, 9:17]
    assert diff_loss(a, b).item() == pytest.approx(0.0, abs=1e-10)
    assert diff_loss(a, a).item() > 1e-3
    assert diff_loss(a, a + 0.1 * b).item() > 1e-3


def test_mmd_zero_for_identical_and_grows_with_shift() -> None:
    x = torch.randn(50, 8, generator=_gen(5))
    assert mmd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert mmd(x, x + 1.0).item() > mmd(x, x + 0.1).item() > 0.0


def _outputs(config: Config, batch: int = 8, views: int = 2):
    with isolated_rng(0):  # parameter init seeded, the global RNG left as it was
        model = FSRF(config)
    dims, lens = config.data.dims(), config.data.lengths()
    g = _gen(6)
    x = {m: torch.randn(views * batch, lens[m], dims[m], generator=g) for m in dims}
    ok = {m: torch.ones(views * batch, lens[m], dtype=torch.bool) for m in dims}
    out = model(x, ok, recon=True, noise_pred=True)
    return model, out.chunk(views), torch.randn(batch, generator=g)


def test_every_term_is_reported_and_total_is_their_weighted_sum() -> None:
    config = Config()
    _, views, labels = _outputs(config)
    total, terms = fsrf_loss(views, labels, config.loss)
    assert set(terms) == {*TERMS, "total"}
    expected = terms["task"] + sum(getattr(config.loss, k) * terms[k] for k in TERMS if k != "task")
    assert torch.allclose(total.detach(), expected)


def test_zero_weight_skips_the_term() -> None:
    config = with_overrides(Config(), {"loss.homo": 0.0, "loss.distill": 0.0, "loss.align": 0.0})
    assert not needs_two_views(config.loss)
    _, views, labels = _outputs(config, views=1)
    _, terms = fsrf_loss(views, labels, config.loss)
    assert "homo" not in terms and "distill" not in terms and "align" not in terms


def test_distillation_stops_gradients_on_the_target_side() -> None:
    off = ("homo", "diff", "recon", "noise", "align")
    config = with_overrides(Config(), {f"loss.{k}": 0.0 for k in off})
    _, views, labels = _outputs(config)
    pa = views[0].pred.detach().requires_grad_(True)
    pb = views[1].pred.detach().requires_grad_(True)
    va = dataclasses.replace(views[0], pred=pa)
    vb = dataclasses.replace(views[1], pred=pb)
    total, _ = fsrf_loss([va, vb], labels, config.loss)
    total.backward()
    n = len(labels)
    # task: mean L1 averaged over two views; distill: MSE(a, sg(b)) + MSE(b, sg(a)).
    # With the stop-gradient each prediction is pulled only by the term where it is the student.
    expected_a = torch.sign(pa - labels) / n / 2 + 2 * (pa - pb) / n
    expected_b = torch.sign(pb - labels) / n / 2 + 2 * (pb - pa) / n
    assert torch.allclose(pa.grad, expected_a, atol=1e-6)
    assert torch.allclose(pb.grad, expected_b, atol=1e-6)


def test_gradient_reversal_negates_the_gradient() -> None:
    x = torch.randn(4, 3, generator=_gen(7), requires_grad=True)
    w = torch.randn(4, 3, generator=_gen(8))
    (grad_reverse(x) * w).sum().backward()
    assert torch.equal(x.grad, -w)


def test_noise_term_reaches_the_noise_encoder_reversed() -> None:
    model, _, labels = _outputs(Config(), views=1)
    dims, lens = Config().data.dims(), Config().data.lengths()
    g = _gen(9)
    x = {m: torch.randn(len(labels), lens[m], dims[m], generator=g) for m in dims}
    ok = {m: torch.ones(len(labels), lens[m], dtype=torch.bool) for m in dims}
    out = model(x, ok, noise_pred=True)
    n_text = out.noise["text"]
    reversed_grad = torch.autograd.grad(
        torch.nn.functional.mse_loss(out.noise_pred["text"], labels), n_text, retain_graph=True
    )[0]
    plain = model.noise_head["text"](n_text).squeeze(-1)  # the same regressor without reversal
    plain_grad = torch.autograd.grad(torch.nn.functional.mse_loss(plain, labels), n_text)[0]
    assert plain_grad.abs().sum() > 0
    assert torch.allclose(reversed_grad, -plain_grad, atol=1e-7)
