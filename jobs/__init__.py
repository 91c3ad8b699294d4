"""Ray job entry points: one module per stage, `python -m jobs.<stage>`."""
