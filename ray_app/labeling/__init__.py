"""Labelling stage: weak labels (catalogue rules, behaviour), human import/export, resolution, quality.

docs/labelling.md is the written label standard these modules implement.
"""
