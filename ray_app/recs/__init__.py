"""Offline recommendation evaluation (pure, no Ray): purchase splits, ranking metrics, baselines and the report."""
