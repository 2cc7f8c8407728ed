"""Base classes of reidkit losses: validate the inputs, let the subclass compute.

Losses take plain tensors, so they work with any model:

* a :class:`ClassificationLoss` is called as ``loss(logits, labels)`` with ``logits: (B, K)``;
* a :class:`MetricLoss` is called as ``loss(features, labels)`` with ``features: (B, D)``.

The class attribute ``input`` names the :class:`reidkit.models.ReIDOutput` field a loss consumes
(``"logits"`` or ``"feature"``); :class:`reidkit.losses.CombinedLoss` routes by it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

_INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class ReIDLoss(nn.Module):
    """Base class of reidkit losses.

    Subclasses derive from :class:`ClassificationLoss` or :class:`MetricLoss` and implement
    :meth:`compute`, which receives validated inputs.

    Attributes:
        input: the ``ReIDOutput`` field the loss consumes, ``"logits"`` or ``"feature"``.
    """

    input: ClassVar[str] = ""
    required_layout: str | None = None
    """The batch layout the loss needs (``"pairs"``: Siamese pairs ``(0, 1), (2, 3), ...`` as
    :class:`reidkit.data.pair_sampler.PairSampler` lays them out); ``None``: any layout."""

    def compute(self, inputs: Tensor, labels: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``inputs: (B, K) or (B, D)``, ``labels: (B,)`` integer -> scalar loss."""
        raise NotImplementedError


class ClassificationLoss(ReIDLoss):
    """A loss on identity logits (``input = "logits"``)."""

    input = "logits"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Validate, then :meth:`compute`.

        Args:
            logits: ``(B, K)`` float class scores (larger is more likely), ``B >= 1``.
            labels: ``(B,)`` integer identities in ``[0, K)``.

        Returns:
            Scalar loss.

        Raises:
            TypeError: an argument is not a tensor.
            ValueError: bad shape or dtype, or a label outside ``[0, K)``.
        """
        check_batch(logits, labels, name="logits", min_batch=1)
        check_label_range(labels, logits.shape[1])
        return self.compute(logits, labels)


class MetricLoss(ReIDLoss):
    """A loss on feature vectors (``input = "feature"``); needs ``B >= 2``."""

    input = "feature"

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """Validate, then :meth:`compute`.

        Args:
            features: ``(B, D)`` float feature vectors, ``B >= 2``.
            labels: ``(B,)`` integer identities.

        Returns:
            Scalar loss.

        Raises:
            TypeError: an argument is not a tensor.
            ValueError: bad shape or dtype, or ``B < 2``.
        """
        check_batch(features, labels, name="features", min_batch=2)
        return self.compute(features, labels)


def check_batch(x: Tensor, labels: Tensor, name: str, min_batch: int) -> None:
    """Check ``x: (B, C)`` float and ``labels: (B,)`` integer with ``B >= min_batch``.

    Raises:
        TypeError: ``x`` or ``labels`` is not a tensor.
        ValueError: wrong shape or dtype; the message names the argument and what was expected.
    """
    for arg, value in ((name, x), ("labels", labels)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor, got {type(value).__name__}")
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a (B, C) floating tensor, got {tuple(x.shape)} {x.dtype}")
    if labels.dim() != 1 or labels.dtype not in _INTEGER_DTYPES:
        got = f"{tuple(labels.shape)} {labels.dtype}"
        raise ValueError(f"labels must be a (B,) integer tensor, got {got}")
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but {name} has B={x.shape[0]} rows")
    if x.shape[0] < min_batch:
        raise ValueError(f"{name} needs a batch of at least {min_batch}, got B={x.shape[0]}")


def check_label_range(labels: Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` unless every label lies in ``[0, num_classes)``."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for logits with K={num_classes} classes, "
            f"got labels in [{low}, {high}]"
        )
