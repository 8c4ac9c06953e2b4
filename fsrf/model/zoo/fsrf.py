"""The FSRF network: encoders, homogeneous-heterogeneous-noise factorization, recovery, fusion.

Shape legend: B batch, T_m time steps of modality m, D_m its feature dim,
H hidden dim (``model.hidden``), M = 3 modalities in the order text, audio, vision.

Per modality m the encoder gives h_m (B, H). The factorization splits it into
a homogeneous part c_m = F_c(h_m) (one encoder shared by all modalities), a
heterogeneous part s_m = F_s^m(h_m) and a noise part n_m = F_n^m(h_m) (one
each per modality); a decoder per modality reconstructs h_m from [c_m; s_m; n_m].

Availability: the model is told which frames were kept (``keep``), and computes
each modality's presence p_m (B,), the kept share of its valid frames. A modality
with p_m at most ``model.absent_at`` (default 0: no frame kept) is *absent* when some other
modality is not. A partly kept modality is encoded from what is left: replacing it by its
recovery when few frames were kept (a threshold of 0.2 was tried) discarded the
modality-specific information still in those frames, and on ``configs/synthetic.yaml``
(frame-level training, rates up to 0.7) the untrained gate at test rates 0.8 and 0.9 made
the full model worse than the plain one at random missing rates.

Recovery path (``model.recovery``): an absent modality's homogeneous part is
recovered from the present modalities' homogeneous parts, which carry the shared
semantics: r_m = G_m(mean of c_k over present k != m), and its heterogeneous token
is replaced by a learned per-modality "missing" token. Fusion reads the six tokens
{c_m or r_m, s_m or missing_m} plus an availability embedding (present / absent
per modality), never the noise parts, and a regression head predicts the score.
With ``model.recovery: false`` the network is the plain one: every token is the
encoding of whatever input is left (zeros for an absent modality), no availability.

The losses (:mod:`fsrf.losses`) train G_m on samples where m is present, and the
self-distillation between two incomplete views is a training-time matter: the
trainer feeds both views through this one network (see :mod:`fsrf.train`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from fsrf._constants import MODALITIES
from fsrf._validate import check, check_one_of, check_unit, check_weights
from fsrf.losses import fsrf_terms, needs_teacher, needs_two_views
from fsrf.model._base import BaseModel, BaseModelConfig, StepOutput, TrainBatch, register_model
from fsrf.model._layers import ModalityEncoder, kept_share, mlp, transformer

if TYPE_CHECKING:
    from fsrf._config import Config


@dataclass(frozen=True)
class EncoderFusionConfig(BaseModelConfig):
    """The fields of FSRF's encoders and fusion, shared by every model built on that network."""

    hidden: int = 64
    heads: int = 4
    encoder_layers: int = 1
    fusion_layers: int = 1
    ff_mult: int = 2
    dropout: float = 0.1
    downsample: int = 1

    def __post_init__(self) -> None:
        check(self.hidden >= 1, "hidden", f"{self.hidden} must be >= 1")
        check(self.heads >= 1, "heads", f"{self.heads} must be >= 1")
        check(self.hidden % self.heads == 0, "heads", f"{self.heads} must divide model.hidden={self.hidden}")
        for key in ("encoder_layers", "fusion_layers", "ff_mult", "downsample"):
            check(getattr(self, key) >= 1, key, f"{getattr(self, key)} must be >= 1")
        check(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} must be in [0, 1)")


# On the real datasets (hundreds of audio/vision frames): wider, audio/vision averaged in windows of 5
REAL_DATA_ARCHITECTURE = {"hidden": 128, "downsample": 5}
# homo / diff / recon start from MISA's MMSA weights per dataset (sim, diff, recon)
_MISA_WEIGHTS = {"mosi": (0.3, 0.1, 1.0), "mosei": (0.8, 0.3, 1.0), "sims": (1.0, 0.3, 0.8)}


@dataclass(frozen=True)
class FSRFConfig(EncoderFusionConfig):
    """FSRF's section: encoders, factorization, recovery and fusion sizes, and its loss weights.

    A loss weight of 0 skips that term's computation (see :mod:`fsrf.losses`).
    """

    name: str = "fsrf"
    recovery: bool = True
    absent_at: float = 0.0
    noise_dim: int = 8
    homo: float = 0.8
    diff: float = 0.3
    recon: float = 1.0
    noise: float = 1.0
    recover: float = 1.0
    distill: float = 1.0
    align: float = 0.5
    align_kind: str = "mmd"
    cmd_order: int = 5
    teacher: str = "views"
    distill_margin: float = 0.25

    dataset_defaults: ClassVar = {
        ds: {**REAL_DATA_ARCHITECTURE, "homo": homo, "diff": diff, "recon": recon}
        for ds, (homo, diff, recon) in _MISA_WEIGHTS.items()
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unit(self.absent_at, "absent_at")
        check(self.noise_dim >= 1, "noise_dim", f"{self.noise_dim} must be >= 1")
        check_one_of(self.align_kind, "align_kind", ("cmd", "mmd"))
        check_one_of(self.teacher, "teacher", ("views", "complete", "both"))
        check_unit(self.distill_margin, "distill_margin")
        check(self.cmd_order >= 1, "cmd_order", f"{self.cmd_order} must be >= 1")
        check_weights(self, self.weight_names())

    @staticmethod
    def weight_names() -> tuple[str, ...]:
        """The auxiliary terms' weight fields (the trainer's task term has weight 1)."""
        return ("homo", "diff", "recon", "noise", "recover", "distill", "align")

    def weights(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.weight_names()}


@dataclass(frozen=True, eq=False)
class FSRFOutput:
    """What one forward pass gives; every dict is keyed by modality.

    Attributes:
        pred: (B,) sentiment predictions.
        fused: (B, H) the fused representation read by the head.
        encoded: h_m, (B, H).
        homo: c_m, the homogeneous part encoded from modality m itself, (B, H).
        hetero: s_m, heterogeneous parts, (B, H).
        noise: n_m, noise parts, (B, N) with N = ``model.noise_dim``.
        recovered: r_m, the homogeneous part recovered from the other modalities, (B, H);
            empty without the recovery path.
        used: the homogeneous token fusion read: r_m where m is absent, else c_m, (B, H).
        presence: (B, M) kept share of each modality's valid frames, in [0, 1].
        absent: (B, M) bool, modalities that fusion treated as absent (recovered).
        recon: reconstructions of h_m, (B, H); empty when not requested.
    """

    pred: torch.Tensor
    fused: torch.Tensor
    encoded: dict[str, torch.Tensor]
    homo: dict[str, torch.Tensor]
    hetero: dict[str, torch.Tensor]
    noise: dict[str, torch.Tensor]
    recovered: dict[str, torch.Tensor]
    used: dict[str, torch.Tensor]
    presence: torch.Tensor
    absent: torch.Tensor
    recon: dict[str, torch.Tensor]

    def float(self) -> FSRFOutput:
        """The same output in float32 (losses are computed in float32 under bf16 autocast)."""

        def cast(value: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
            if isinstance(value, dict):
                return {k: v.float() for k, v in value.items()}
            return value.float() if value.is_floating_point() else value

        return FSRFOutput(**{f.name: cast(getattr(self, f.name)) for f in fields(self)})

    def chunk(self, n: int) -> list[FSRFOutput]:
        """Split along the batch into ``n`` equal outputs (one per view)."""

        def split(value: torch.Tensor | dict[str, torch.Tensor]) -> list:
            if isinstance(value, dict):
                parts = {k: v.chunk(n) for k, v in value.items()}
                return [{k: parts[k][i] for k in value} for i in range(n)]
            return list(value.chunk(n))

        columns = {f.name: split(getattr(self, f.name)) for f in fields(self)}
        return [FSRFOutput(**{k: v[i] for k, v in columns.items()}) for i in range(n)]


@register_model
class FSRF(BaseModel):
    """The FSRF model, built from a run config (reads ``config.model`` and ``config.data``).

    Example:
        >>> import torch
        >>> from fsrf import FSRF, Config
        >>> model = FSRF(Config())
        >>> dims, lens = Config().data.dims(), Config().data.lengths()
        >>> x = {m: torch.randn(2, lens[m], dims[m]) for m in dims}
        >>> ok = {m: torch.ones(2, lens[m], dtype=torch.bool) for m in dims}
        >>> model(x, ok).pred.shape
        torch.Size([2])
    """

    name = "fsrf"
    config_class = FSRFConfig
    paper = "FSRF: factorization-guided semantic recovery for incomplete multimodal sentiment analysis"
    faithful = ("per-modality homogeneous / heterogeneous / noise factorization under similarity, "
                "de-redundancy, reconstruction and noise constraints; two-way self-distillation between "
                "incomplete views with distribution alignment")
    deviations = ("the paper's full text is unavailable: every formula is a documented reconstruction "
                  "(fsrf/losses.py); all terms scale-invariant; recovery path r_m = G_m(mean present c_k) "
                  "and an availability embedding added; distillation only where the teacher view has more "
                  "than `distill_margin` more of a modality")

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        mc, dims, lens = config.model, config.data.dims(), config.data.lengths()
        recovery = bool(getattr(mc, "recovery", False))  # the plain model (a subclass) has none
        noise_dim = int(getattr(mc, "noise_dim", FSRFConfig.noise_dim))
        hidden = mc.hidden
        self.encoders = nn.ModuleDict(
            {
                m: ModalityEncoder(
                    in_dim=dims[m],
                    max_len=lens[m],
                    hidden=hidden,
                    heads=mc.heads,
                    layers=mc.encoder_layers,
                    ff_mult=mc.ff_mult,
                    dropout=mc.dropout,
                    downsample=1 if m == "text" else mc.downsample,
                )
                for m in MODALITIES
            }
        )
        self.homo = mlp(hidden, dropout=mc.dropout)
        self.hetero = nn.ModuleDict({m: mlp(hidden, dropout=mc.dropout) for m in MODALITIES})
        self.noise = nn.ModuleDict({m: mlp(hidden, out=noise_dim, dropout=mc.dropout) for m in MODALITIES})
        self.decoder = nn.ModuleDict({m: nn.Linear(2 * hidden + noise_dim, hidden) for m in MODALITIES})
        self.recovery = recovery
        self.absent_at = float(getattr(mc, "absent_at", 0.0))
        self.loss_config = mc
        if recovery:
            self.recover = nn.ModuleDict({m: mlp(hidden, dropout=mc.dropout) for m in MODALITIES})
            self.missing_token = nn.Parameter(torch.randn(len(MODALITIES), hidden) * 0.02)
            self.availability = nn.Parameter(torch.randn(2, 2 * len(MODALITIES), hidden) * 0.02)
        self.token_type = nn.Parameter(torch.randn(2 * len(MODALITIES), hidden) * 0.02)
        self.fusion = transformer(hidden, mc.heads, mc.fusion_layers, mc.ff_mult, mc.dropout)
        self.fusion_norm = nn.LayerNorm(hidden)
        self.head = mlp(hidden, out=1, dropout=mc.dropout)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        valid: dict[str, torch.Tensor],
        *,
        keep: dict[str, torch.Tensor] | None = None,
        recon: bool = False,
    ) -> FSRFOutput:
        """Run the network on (possibly incomplete) inputs.

        Args:
            features: modality -> (B, T_m, D_m); missing frames already zero-filled.
            valid: modality -> (B, T_m) bool, False at padding.
            keep: modality -> (B, T_m) bool, False at dropped frames; None = nothing dropped.
            recon: also decode the reconstructions of h_m.
        """
        presence = kept_share(valid, keep)  # (B, M)
        h = {m: self.encoders[m](features[m], valid[m]) for m in MODALITIES}  # (B, H) each
        c = {m: self.homo(h[m]) for m in MODALITIES}
        s = {m: self.hetero[m](h[m]) for m in MODALITIES}
        n = {m: self.noise[m](h[m]) for m in MODALITIES}
        if self.recovery:
            recovered, used, absent = self._recover(c, presence)
            het = {
                m: torch.where(absent[:, i : i + 1], self.missing_token[i].to(s[m].dtype), s[m])
                for i, m in enumerate(MODALITIES)
            }
            state = absent.repeat(1, 2).long()  # (B, 2M): the c tokens', then the s tokens' state
            available = self.availability[state, torch.arange(state.shape[1], device=state.device)]
        else:
            recovered, used, het = {}, c, s
            absent = torch.zeros_like(presence, dtype=torch.bool)
            available = 0.0
        tokens = torch.stack([used[m] for m in MODALITIES] + [het[m] for m in MODALITIES], dim=1)
        tokens = tokens + self.token_type + available  # (B, 2M, H)
        fused = self.fusion_norm(self.fusion(tokens).mean(dim=1))  # (B, H)
        pred = self.head(fused).squeeze(-1)  # (B,)
        rec = (
            {m: self.decoder[m](torch.cat([c[m], s[m], n[m]], dim=-1)) for m in MODALITIES}
            if recon
            else {}
        )
        return FSRFOutput(pred, fused, h, c, s, n, recovered, used, presence, absent, rec)

    def training_views(self) -> int:
        return 2 if needs_two_views(self.loss_config) else 1

    def training_step(self, batch: TrainBatch) -> StepOutput:
        """Both views through the one network, the complete batch as teacher if asked, FSRF's terms."""
        cfg = self.loss_config
        out = self(batch.features, batch.valid, keep=batch.keep, recon=cfg.recon > 0)
        teacher = None
        if needs_teacher(cfg):
            with torch.no_grad():
                n, device = len(batch.labels), batch.labels.device
                complete = {m: v.to(device, non_blocking=True) for m, v in batch.complete.items()}
                teacher = self(complete, {m: v[:n] for m, v in batch.valid.items()}).float()
        views = [o.float() for o in out.chunk(batch.views)]
        with torch.autocast(device_type=batch.labels.device.type, enabled=False):  # terms in float32
            terms = fsrf_terms(views, batch.labels, cfg, teacher=teacher, task=batch.task)
        return StepOutput(preds=[v.pred for v in views], terms=terms)

    def _recover(
        self, c: dict[str, torch.Tensor], presence: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """r_m from the present modalities' c_k (k != m); which modalities count as absent."""
        present = presence > self.absent_at  # (B, M)
        stacked = torch.stack([c[m] for m in MODALITIES], dim=1)  # (B, M, H)
        recovered, used, absent = {}, {}, []
        for i, m in enumerate(MODALITIES):
            others = present.clone()
            others[:, i] = False
            weight = others.to(stacked.dtype).unsqueeze(-1)  # (B, M, 1)
            # When no other modality is present, r_m reads the mean of all three (it is not used).
            count = weight.sum(dim=1)
            source = torch.where(count > 0, (stacked * weight).sum(dim=1) / count.clamp_min(1.0),
                                 stacked.mean(dim=1))  # (B, H)
            recovered[m] = self.recover[m](source)
            gone = ~present[:, i] & others.any(dim=1)  # (B,)
            used[m] = torch.where(gone.unsqueeze(-1), recovered[m], c[m])
            absent.append(gone)
        return recovered, used, torch.stack(absent, dim=1)


__all__ = ["FSRF", "REAL_DATA_ARCHITECTURE", "EncoderFusionConfig", "FSRFConfig", "FSRFOutput"]
