"""The dataset a config asks for, checked against the shapes the model is built for."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from fsrf._config import DataConfig
from fsrf._constants import LABEL_BOUNDS, MODALITIES
from fsrf._errors import FSRFError
from fsrf.data import (
    MultimodalDataset,
    assemble_domains,
    load_mmsa,
    make_domain,
    make_recovery,
    make_synthetic,
    save_mmsa,
)
from fsrf.model._text import TOKEN_CHANNELS, check_text_dim, check_tokens, read_text_model


def load_dataset(cfg: DataConfig, *, path: str | Path | None = None) -> MultimodalDataset:
    """Load the MMSA file at ``path`` (or ``data.path``), or build the synthetic dataset; with
    ``data.prompts``, each split's encoded prompts go to ``extras["prompt"]``.

    The synthetic dataset is written in the MMSA layout to a temporary file and
    read back through :func:`fsrf.data.load_mmsa`, so every run exercises the loader.

    Raises:
        FSRFError: no path for a real dataset, or the file's shapes disagree with ``data.*``.
    """
    if cfg.domains:
        if path is not None:
            raise FSRFError(f"--data: {path} given, but data.domains reads one file per domain (data.domain_paths)")
        return load_domains(cfg)
    source = path if path is not None else cfg.path
    if source is None and cfg.dataset != "synthetic":
        raise FSRFError(f"data.path: dataset {cfg.dataset!r} needs an MMSA pickle (--data FILE)")
    if source is None:
        with tempfile.TemporaryDirectory(prefix="fsrf-synthetic-") as tmp:
            file = Path(tmp) / "synthetic.pkl"
            save_mmsa(file, synthetic_data(cfg))
            dataset = load_mmsa(file, name="synthetic", text_input=cfg.text_input)
    else:
        dataset = load_mmsa(source, name=cfg.dataset, text_input=cfg.text_input)
    check_shapes(cfg, dataset)
    if cfg.prompts is not None:
        from fsrf.data._prompts import attach_prompts

        dataset = attach_prompts(dataset, cfg.prompts,
                                 text_model=cfg.text_model if cfg.text_input == "tokens" else None)
    return dataset


def unread_prompts_dropped(cfg: DataConfig, model: Any) -> DataConfig:
    """``cfg`` without ``data.prompts`` when ``model`` (in eval mode) reads no prompt: evaluating
    or predicting with an mmslf student needs no prompt file (its teacher does)."""
    if cfg.prompts is None:
        return cfg
    from fsrf.data._prompts import PROMPT

    was_training = model.training
    needed = PROMPT in model.eval().extras
    model.train(was_training)
    return cfg if needed else dataclasses.replace(cfg, prompts=None)


def domain_dims(cfg: DataConfig, k: int) -> dict[str, int]:
    """Domain k's own feature dims (``data.domain_<m>_dims[k]``)."""
    return {m: getattr(cfg, f"domain_{m}_dims")[k] for m in MODALITIES}


def load_domains(cfg: DataConfig) -> MultimodalDataset:
    """The leave-one-domain-out dataset of ``data.domains`` (:func:`fsrf.data.assemble_domains`).

    Each domain is an MMSA pickle (``data.domain_paths``) or, with ``dataset: synthetic``, a
    generated domain written to a temporary MMSA file and read back; each is checked against its
    recorded dims (``data.domain_<m>_dims``) and the padded lengths ``data.<m>_len``. With
    ``data.domain_label_rescale`` a source domain whose label range differs from the target's
    has its labels multiplied by (target bound / its bound), e.g. MOSI's by 1/3 for a SIMS target
    (the config refuses mixed ranges without it); the target's labels are never changed.
    """
    datasets = []
    with tempfile.TemporaryDirectory(prefix="fsrf-domains-") as tmp:
        for k, name in enumerate(cfg.domains):
            if cfg.dataset == "synthetic":
                file = Path(tmp) / f"domain{k}.pkl"
                save_mmsa(file, make_domain(
                    seed=cfg.synthetic_seed, k=k, dims=[domain_dims(cfg, j) for j in range(len(cfg.domains))],
                    shift=cfg.domain_shift, n_train=cfg.synthetic_train, n_valid=cfg.synthetic_valid,
                    n_test=cfg.synthetic_test, **{f"{m}_len": getattr(cfg, f"{m}_len") for m in MODALITIES}))
                dataset = dataclasses.replace(load_mmsa(file, name="synthetic"), source=f"synthetic domain {k}")
            else:
                dataset = load_mmsa(cfg.domain_paths[k], name=name)
                factor = LABEL_BOUNDS[cfg.target or name] / LABEL_BOUNDS[name]
                if cfg.domain_label_rescale and factor != 1.0 and name != cfg.target:
                    dataset = _rescaled(dataset, factor)
            dims, lens, where = dataset.train.dims(), dataset.train.lengths(), dataset.source or name
            for m in MODALITIES:
                if dims[m] != domain_dims(cfg, k)[m]:
                    raise FSRFError(f"data.domain_{m}_dims: config says {domain_dims(cfg, k)[m]} for domain {name!r} "
                                    f"but {where} has {dims[m]} {m} features")
                if lens[m] > getattr(cfg, f"{m}_len"):
                    raise FSRFError(f"data.{m}_len: config says {getattr(cfg, f'{m}_len')} but domain {name!r} "
                                    f"({where}) has {lens[m]} {m} steps (set data.{m}_len={lens[m]})")
            datasets.append(dataset)
    return assemble_domains(datasets, names=cfg.domains, target=cfg.target or "", dims=cfg.dims(),
                            lengths=cfg.lengths(), name=cfg.dataset)


def _rescaled(dataset: MultimodalDataset, factor: float) -> MultimodalDataset:
    """``dataset`` with every split's labels multiplied by ``factor`` (its source says so)."""
    splits = {name: None if split is None else dataclasses.replace(split, labels=split.labels * factor)
              for name, split in (("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test))}
    return dataclasses.replace(dataset, **splits, source=f"{dataset.source} (labels x {factor:g})")


def synthetic_data(cfg: DataConfig) -> dict[str, dict[str, Any]]:
    """The MMSA dict of the synthetic dataset ``data.synthetic_*`` describes (planted factors included)."""
    kwargs: dict[str, Any] = {
        "seed": cfg.synthetic_seed,
        "n_train": cfg.synthetic_train,
        "n_valid": cfg.synthetic_valid,
        "n_test": cfg.synthetic_test,
        **{f"{m}_{k}": getattr(cfg, f"{m}_{k}") for m in MODALITIES for k in ("len", "dim")},
    }
    if cfg.synthetic_kind == "recovery":
        return make_recovery(**kwargs, latent=cfg.synthetic_latent, label=cfg.synthetic_label,
                             label_noise=cfg.synthetic_label_noise, cue_frames=cfg.synthetic_cue_frames)
    return make_synthetic(**kwargs)


def check_shapes(cfg: DataConfig, dataset: MultimodalDataset) -> None:
    """The file's feature dims must equal ``data.<m>_dim`` and its lengths fit ``data.<m>_len``.

    With ``data.text_input: tokens`` the text holds token and segment ids instead of features:
    they must fit the vocabulary of ``data.text_model``, whose hidden size must equal
    ``data.text_dim`` (the directory's config and tokenizer are read, not its weights).
    """
    dims, lens = dataset.train.dims(), dataset.train.lengths()
    where = dataset.source or "dataset"
    tokens = cfg.text_input == "tokens"
    for m in MODALITIES:
        if m == "text" and tokens:
            if dims[m] != TOKEN_CHANNELS:
                raise FSRFError(
                    f"data.text_input: tokens, but {where} was loaded with {dims[m]}-wide text features, "
                    f"not token ids (load it with text_input='tokens')"
                )
        elif dims[m] != getattr(cfg, f"{m}_dim"):
            raise FSRFError(
                f"data.{m}_dim: config says {getattr(cfg, f'{m}_dim')} but {where} has "
                f"{dims[m]} {m} features (set data.{m}_dim={dims[m]})"
            )
        if lens[m] > getattr(cfg, f"{m}_len"):
            raise FSRFError(
                f"data.{m}_len: config says {getattr(cfg, f'{m}_len')} but {where} has "
                f"{lens[m]} {m} steps (set data.{m}_len={lens[m]})"
            )
    if tokens:
        assert cfg.text_model is not None  # DataConfig checks it
        info = read_text_model(cfg.text_model)
        check_text_dim(info, cfg.text_dim)
        for name, split in (("train", dataset.train), ("valid", dataset.valid), ("test", dataset.test)):
            if split is not None:  # a trial's dataset has no test split
                check_tokens(info, split.features["text"], text_len=cfg.text_len, where=f"{where}: split {name!r}")
