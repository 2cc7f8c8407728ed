"""reidkit: person re-identification models, losses, training, evaluation and search."""

__version__ = "0.1.0"
