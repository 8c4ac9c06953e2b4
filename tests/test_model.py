"""The network: shapes, missing modalities, precision."""

from __future__ import annotations

import pytest
import torch

from fsrf import FSRF, MODALITIES, Config
from fsrf._rng import isolated_rng
from fsrf.losses import fsrf_loss
from fsrf.missing import apply_keep, pattern_keep


def _inputs(config: Config, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dims, lens = config.data.dims(), config.data.lengths()
    x = {m: torch.randn(batch, lens[m], dims[m], generator=g) for m in MODALITIES}
    valid = {m: torch.ones(batch, lens[m], dtype=torch.bool) for m in MODALITIES}
    return x, valid, torch.randn(batch, generator=g)


def _model(config: Config) -> FSRF:
    with isolated_rng(0):
        return FSRF(config)


def test_output_shapes(tiny_config: Config) -> None:
    model = _model(tiny_config)
    x, valid, _ = _inputs(tiny_config, 5)
    out = model(x, valid, recon=True)
    h = tiny_config.model.hidden
    assert out.pred.shape == (5,) and out.fused.shape == (5, h)
    for part in (out.encoded, out.homo, out.hetero, out.recon, out.recovered, out.used):
        assert list(part) == list(MODALITIES) and all(v.shape == (5, h) for v in part.values())
    assert all(v.shape == (5, tiny_config.model.noise_dim) for v in out.noise.values())
    assert out.presence.shape == (5, 3) and out.absent.shape == (5, 3) and not out.absent.any()
    assert [o.pred.shape for o in out.chunk(5)] == [(1,)] * 5


@pytest.mark.parametrize("present", [("text",), ("audio",), ("vision",), ("audio", "vision")])
def test_entirely_missing_modalities_give_finite_outputs_and_gradients(tiny_config: Config, present) -> None:
    model = _model(tiny_config)
    x, valid, labels = _inputs(tiny_config, 8)
    keep = pattern_keep(valid, present)
    x = apply_keep(x, keep)
    # and one sample whose audio has no valid frame at all (zero length)
    valid["audio"][0] = False
    x["audio"][0] = 0.0
    out = model(x, valid, keep=keep, recon=True)
    absent = [m not in present for m in MODALITIES]
    assert out.absent[1:].tolist() == [absent] * 7
    total, terms = fsrf_loss([out], labels, tiny_config.model)
    total.backward()
    assert torch.isfinite(out.pred).all()
    assert all(torch.isfinite(v) for v in terms.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_padding_does_not_change_the_prediction(tiny_config: Config) -> None:
    model = _model(tiny_config).eval()
    x, valid, _ = _inputs(tiny_config, 3)
    valid["vision"][:, 10:] = False
    x["vision"][:, 10:] = 0.0
    before = model(x, valid).pred
    x["vision"][:, 10:] = 123.0  # garbage in padding is ignored
    assert torch.allclose(before, model(x, valid).pred, atol=1e-5)


def test_bf16_autocast_forward_and_backward_on_cpu(tiny_config: Config) -> None:
    model = _model(tiny_config)
    x, valid, labels = _inputs(tiny_config, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, valid, recon=True)
    total, _ = fsrf_loss([out.float()], labels, tiny_config.model)
    total.backward()
    assert out.pred.dtype == torch.bfloat16 and torch.isfinite(total)


def test_downsampled_encoders_accept_any_length(tiny_config: Config) -> None:
    from fsrf import with_overrides

    config = with_overrides(tiny_config, {"model.downsample": 5, "data.audio_len": 17})
    model = _model(config)
    x, valid, _ = _inputs(config, 4)
    valid["audio"][:, 12:] = False
    assert torch.isfinite(model(x, valid).pred).all()
