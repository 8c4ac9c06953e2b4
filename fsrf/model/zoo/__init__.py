"""One module per registered model; every module in this package is imported by :mod:`fsrf.model`."""
