"""Cross-entropy with label smoothing on identity logits."""

from __future__ import annotations

from torch import Tensor

from .base import ClassificationLoss


class CrossEntropyLoss(ClassificationLoss):
    """Softmax cross-entropy with label smoothing.

    The target of a sample with label ``y`` among ``K`` classes is ``q = (1 - eps) * onehot(y) +
    eps / K`` and the loss is ``-sum_k q_k log p_k`` with ``p = softmax(logits)``, averaged over
    the batch. Label smoothing is from Szegedy et al., "Rethinking the Inception Architecture",
    CVPR 2016; ReID uses it with ``eps = 0.1`` (Luo et al., "Bag of Tricks", CVPRW 2019; OSNet,
    Zhou et al., ICCV 2019). ``eps = 0`` is the plain cross-entropy.

    Call as ``loss(logits, labels)`` with ``logits: (B, K)`` float (larger is more likely) and
    ``labels: (B,)`` integer in ``[0, K)``; returns a scalar. Bad shapes, dtypes or out-of-range
    labels raise ``ValueError`` (see :meth:`ClassificationLoss.forward`).

    Args:
        label_smoothing: ``eps`` in ``[0, 1]``.

    Raises:
        ValueError: ``label_smoothing`` outside ``[0, 1]``.
    """

    def __init__(self, label_smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def compute(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``logits: (B, K)``, ``labels: (B,)`` (validated) -> scalar mean loss."""
        log_probs = logits.log_softmax(dim=1)  # (B, K)
        nll = -log_probs.gather(1, labels.long()[:, None]).squeeze(1)  # (B,) -log p_y
        uniform = -log_probs.mean(dim=1)  # (B,) -sum_k (1/K) log p_k
        eps = self.label_smoothing
        return ((1.0 - eps) * nll + eps * uniform).mean()

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
