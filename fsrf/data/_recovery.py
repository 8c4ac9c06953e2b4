"""The recovery benchmark: synthetic data on which recovering missing semantics must pay off.

Shape legend: N samples, T_m steps of modality m, D_m its feature dimension, K the
latent size (``latent``). Every draw comes from one ``numpy.random.Generator`` (frame cues: a second).

Generative structure, per sample:

* a shared latent ``z ~ N(0, I_K)``: the semantics every modality expresses;
* a specific latent ``u_m ~ N(0, I_K)`` per modality, only in modality m;
* a nuisance ``w_m ~ N(0, I_2)`` per modality (a sample-level offset, no sentiment);
* the label ``y = clip(1.5 s + label_noise * e, -3, 3)`` rounded to 1/3 (MOSI's scale),
  where ``s = a . z`` (``label="shared"``, the benchmark) or ``s = a . u_text``
  (``label="specific"``, a control), with a fixed unit vector ``a``.

Modality m renders its factors through its own nonlinear map: a fixed random
two-layer tanh network ``phi_m: R^{2K} -> R^{D_m}`` of ``[z; u_m]``. Its frames at
valid step t are ``x_t = gain_m phi_m(z, u_m) g_t + C_m w_m + noise_t``, with a
log-normal gain ``g_t`` (mean 1) and per-frame noise whose std grows as sqrt(T_m),
so a whole sequence has the same SNR at any length and dropping frames hurts.
Modalities differ in strength (``gain_m``: text 1.0, audio 0.8, vision 0.7).

Why a recovering method must beat a plain one here (``label="shared"``): the label
depends only on z, every modality carries z through a different nonlinear map, and
there are few, noisy labels (MOSI's 1,284 training samples by default, label noise
0.6 on a scale of 1.5). A plain model trained with missing inputs has to learn each
modality's inverse map, and the regression for every availability pattern, from those
noisy labels alone. Cross-modal agreement identifies z without labels (z is the only
thing the modalities share), and a teacher view that has a modality gives the view
that lacks it a target with the label noise averaged out. Neither signal exists for
the plain model. The controls remove the reason: with many labels the supervised
signal suffices (``n_train`` large), and with ``label="specific"`` the label lives in
text's own factor, which no other modality can restore.

Frame cues (``cue_frames=True``, ``data.synthetic_cue_frames``; for MMSLF's prompts, which can
only choose frames to attend to): audio and vision then span all T_m steps, split into
:data:`WINDOWS` contiguous thirds (``early``, ``middle``, ``late``). One third per clip, drawn
uniformly and shared by audio and vision, renders ``phi_m(z, u_m)`` as above; each of the other
two renders its own distractor latents ``phi_m(z', u')`` (z', u' ~ N(0, I_K), fresh per clip and
third), with the same gain, nuisance and frame noise, so the thirds are statistically alike and
only knowing where the window is tells which one carries the sentiment. The windows and
distractors come from a second generator (seeded from ``seed``), so labels, text, factors,
gains and noise are those of the same seed without frame cues. The window's index goes to
``cue_window`` (N,) for :func:`fsrf.data._prompts.synthetic_prompts`. Off (the default),
nothing changes.

The planted factors are stored beside the MMSA keys of each split, for probes:
``factor_shared`` (N, K), ``factor_<m>`` (N, K) and ``factor_nuisance_<m>`` (N, 2).
The MMSA loader ignores them (and ``cue_window``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fsrf._constants import MODALITIES, SPLITS
from fsrf._errors import FSRFError
from fsrf.data._synthetic import check_layout, mmsa_labels, split_extras, text_bert

LABELS = ("shared", "specific")
"""What the label reads: the shared latent (the benchmark) or text's own factor (a control)."""

_GAIN = {"text": 1.0, "audio": 0.8, "vision": 0.7}
_NUISANCE = 2
_NUISANCE_STD = 1.5
_FRAME_NOISE_STD = 2.0
_REFERENCE_STEPS = 40
_GAIN_SIGMA = 0.5
_LABEL_SCALE = 1.5
WINDOWS = ("early", "middle", "late")
"""The frame-cue windows of ``cue_frames``: the thirds of the audio / vision steps, in order."""
_CUE_MODALITIES = ("audio", "vision")
_CUE_STREAM = 0xC0E


def make_recovery(
    *,
    seed: int,
    n_train: int = 1284,
    n_valid: int = 229,
    n_test: int = 686,
    text_len: int = 24,
    audio_len: int = 40,
    vision_len: int = 40,
    text_dim: int = 32,
    audio_dim: int = 12,
    vision_dim: int = 16,
    latent: int = 4,
    label: str = "shared",
    label_noise: float = 0.6,
    cue_frames: bool = False,
) -> dict[str, dict[str, Any]]:
    """Generate the recovery benchmark (or a control) as an MMSA unaligned dict.

    Args:
        seed: seeds the one generator behind every draw (maps, factors, frames).
        n_train: N of the train split (``n_valid``, ``n_test`` likewise; MOSI's by default).
        text_len: L, the padded text length (``audio_len``, ``vision_len`` likewise).
        text_dim: D_t (``audio_dim``, ``vision_dim`` likewise); each at least ``latent``.
        latent: K, the size of the shared and of each specific latent.
        label: ``shared`` (the benchmark) or ``specific`` (the label reads u_text: a control).
        label_noise: std of the label noise before scaling to [-3, 3].
        cue_frames: audio / vision carry the sentiment in one random third of their frames only
            (distractors elsewhere; see the module docstring), its index in ``cue_window``.

    Returns:
        ``{"train"|"valid"|"test": split}`` in the MMSA layout of
        :func:`fsrf.data.make_synthetic`, plus the ``factor_*`` arrays.
    """
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    steps = {"text": text_len, "audio": audio_len, "vision": vision_len}
    dims = {"text": text_dim, "audio": audio_dim, "vision": vision_dim}
    check_layout("make_recovery", sizes, steps, {}, extra=(("latent", latent, 1),))
    check_layout("make_recovery", {}, {}, dims, min_dim=latent)
    if label not in LABELS:
        raise FSRFError(f"make_recovery: label={label!r}, expected one of {', '.join(LABELS)}")
    if not (isinstance(label_noise, (int, float)) and 0.0 <= label_noise):
        raise FSRFError(f"make_recovery: label_noise={label_noise!r}, expected a number >= 0")
    if cue_frames and min(steps[m] for m in _CUE_MODALITIES) < len(WINDOWS):
        raise FSRFError(f"make_recovery: cue_frames needs audio_len and vision_len >= {len(WINDOWS)} "
                        f"(one window per third), got {steps['audio']} and {steps['vision']}")
    rng = np.random.default_rng(seed)
    # frame cues draw from their own stream: every other draw is the one without them
    cue_rng = np.random.default_rng([seed, _CUE_STREAM]) if cue_frames else None
    readout = rng.standard_normal(latent)
    readout /= np.linalg.norm(readout)
    maps = {m: _render_map(rng, 2 * latent, dims[m]) for m in MODALITIES}
    data: dict[str, dict[str, Any]] = {}
    offset = 0
    for split in SPLITS:
        data[split] = _make_split(
            rng, maps, steps, readout, n=sizes[split], offset=offset, latent=latent,
            label=label, label_noise=float(label_noise), cue_rng=cue_rng,
        )
        offset += sizes[split]
    return data


def _render_map(rng: np.random.Generator, fan_in: int, dim: int) -> dict[str, np.ndarray]:
    """A fixed random tanh network R^{fan_in} -> R^{dim} (output at unit variance) and the nuisance mix (2, dim)."""
    width = 4 * fan_in
    w1 = rng.standard_normal((fan_in, width)) * (1.5 / math.sqrt(fan_in))
    b1 = 0.5 * rng.standard_normal(width)
    w2 = rng.standard_normal((width, dim)) / math.sqrt(width)
    # Unit output variance per dim, measured on a fixed probe sample of the inputs.
    probe = np.tanh(rng.standard_normal((2048, fan_in)) @ w1 + b1) @ w2
    mix = rng.standard_normal((_NUISANCE, dim)) * (_NUISANCE_STD / math.sqrt(_NUISANCE))
    return {"w1": w1, "b1": b1, "w2": w2 / probe.std(axis=0), "c2": -probe.mean(axis=0) / probe.std(axis=0),
            "mix": mix}


def _render(mapping: dict[str, np.ndarray], inputs: np.ndarray) -> np.ndarray:
    return np.tanh(inputs @ mapping["w1"] + mapping["b1"]) @ mapping["w2"] + mapping["c2"]


def _make_split(
    rng: np.random.Generator,
    maps: dict[str, dict[str, np.ndarray]],
    steps: dict[str, int],
    readout: np.ndarray,
    *,
    n: int,
    offset: int,
    latent: int,
    label: str,
    label_noise: float,
    cue_rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    z = rng.standard_normal((n, latent))
    specific = {m: rng.standard_normal((n, latent)) for m in MODALITIES}
    nuisance = {m: rng.standard_normal((n, _NUISANCE)) for m in MODALITIES}
    score = (z if label == "shared" else specific["text"]) @ readout
    raw = _LABEL_SCALE * score + label_noise * rng.standard_normal(n)
    labels = mmsa_labels(raw)
    window = None if cue_rng is None else cue_rng.integers(0, len(WINDOWS), size=n)

    split: dict[str, Any] = {}
    lengths: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        t, dim = steps[m], maps[m]["w2"].shape[1]
        lengths[m] = rng.integers(math.ceil(t / 2), t + 1, size=n).astype(np.int64)
        signal = _GAIN[m] * _render(maps[m], np.concatenate([z, specific[m]], axis=1))  # (N, D)
        x = rng.standard_normal((n, t, dim), dtype=np.float32)
        x *= np.float32(_FRAME_NOISE_STD * math.sqrt(t / _REFERENCE_STEPS))
        gain = np.exp(_GAIN_SIGMA * rng.standard_normal((n, t)) - _GAIN_SIGMA**2 / 2).astype(np.float32)
        if window is not None and m in _CUE_MODALITIES:
            lengths[m][:] = t  # fixed windows: every step is valid
            x += gain[:, :, None] * _windowed(cue_rng, maps[m], signal, window, t, latent, _GAIN[m])
        else:
            x += gain[:, :, None] * signal.astype(np.float32)[:, None, :]
        x += (nuisance[m] @ maps[m]["mix"]).astype(np.float32)[:, None, :]
        x[np.arange(t)[None, :] >= lengths[m][:, None]] = 0.0
        split[m] = x
    split["text_bert"] = text_bert(rng, lengths["text"], steps["text"])
    split["audio_lengths"] = lengths["audio"]
    split["vision_lengths"] = lengths["vision"]
    split.update(split_extras(labels, offset))
    split["factor_shared"] = z.astype(np.float32)
    for m in MODALITIES:
        split[f"factor_{m}"] = specific[m].astype(np.float32)
        split[f"factor_nuisance_{m}"] = nuisance[m].astype(np.float32)
    if window is not None:
        split["cue_window"] = window.astype(np.int64)
    return split


def _window_of_step(t: int) -> np.ndarray:
    """(T,) the window (third) each of T steps lies in."""
    return np.minimum(np.arange(t) * len(WINDOWS) // t, len(WINDOWS) - 1)


def _windowed(rng: np.random.Generator, mapping: dict[str, np.ndarray], signal: np.ndarray, window: np.ndarray,
              t: int, latent: int, gain: float) -> np.ndarray:
    """(N, T, D) per-step rendered content: ``signal`` (N, D) in each clip's window, the rendering
    of fresh distractor latents [z'; u'] in each other third (one draw per clip and third)."""
    n = signal.shape[0]
    decoys = rng.standard_normal((n, len(WINDOWS), 2 * latent))
    content = gain * _render(mapping, decoys.reshape(n * len(WINDOWS), -1)).reshape(n, len(WINDOWS), -1)
    content[np.arange(n), window] = signal
    return content[:, _window_of_step(t)].astype(np.float32)
