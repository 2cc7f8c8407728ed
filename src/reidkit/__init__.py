"""reidkit: person re-identification models, losses, training, evaluation and search.

``reidkit.Embedder`` (see :mod:`reidkit.embedder`) embeds person crops for trackers; it is
imported on first use, so ``import reidkit`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["Embedder", "__version__"]


def __getattr__(name: str):
    if name == "Embedder":
        from .embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'reidkit' has no attribute {name!r}")
