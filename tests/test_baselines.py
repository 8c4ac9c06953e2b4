"""The defining property of each of the field's reference systems."""

from __future__ import annotations

import pytest
import torch

from fsrf import Config, with_overrides
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
