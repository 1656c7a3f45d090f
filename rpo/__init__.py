"""Relative Preference Optimization (arXiv 2402.10958): data, models, losses, training, evaluation."""

__version__ = "0.1.0"
