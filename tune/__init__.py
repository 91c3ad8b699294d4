"""Ray Tune hyperparameter search over the training function."""
