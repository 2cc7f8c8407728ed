"""Exceptions of the gallery index; each message names the folder, file, key or value at fault."""

from __future__ import annotations


class GalleryIndexError(ValueError):
    """Bad input to a gallery index, or a folder that is not a usable index.

    Raised for a missing or foreign index folder, a corrupt manifest, a dimension mismatch, an
    empty query array, NaN or infinite features, unknown ids. The index on disk is unchanged
    whenever this is raised.
    """


class IndexLockedError(GalleryIndexError):
    """Another writer holds the index's writer lock longer than the lock timeout."""


class ModelMismatchError(GalleryIndexError):
    """The index was built by another model (or other preprocessing) than the one expected."""
