"""MMSA-format data loading and the built-in synthetic dataset."""

from fsrf.data._domains import assemble_domains, make_domain
from fsrf.data._mmsa import load_mmsa, save_mmsa
from fsrf.data._pickle import load_pickle_restricted
from fsrf.data._recovery import make_recovery
from fsrf.data._synthetic import make_synthetic, write_synthetic
from fsrf.data._types import Batch, MultimodalDataset, Split

__all__ = [
    "Batch",
    "MultimodalDataset",
    "Split",
    "assemble_domains",
    "load_mmsa",
    "load_pickle_restricted",
    "make_domain",
    "make_recovery",
    "make_synthetic",
    "save_mmsa",
    "write_synthetic",
]
