"""The FSRF network."""

from fsrf.model._fsrf import FSRF, FSRFOutput

__all__ = ["FSRF", "FSRFOutput"]
