"""Hyperparameter sweeps: Optuna studies whose trials are ordinary training runs."""
