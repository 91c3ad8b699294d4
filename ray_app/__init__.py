"""Shared library of the platform: store, data preparation, labelling, models, metrics."""
