"""Multi-scale gradient regulariser (MSGR) of AMSFL, by double back-propagation.

Paper: X. Wang et al., "Adversarial Multi-scale Feature Learning for Person Re-identification",
arXiv:2012.14061, 2020 (seed 000), Sec. III-B.

The robust objective ``min_theta max_{||delta||_p <= eps} L(x + delta)`` is linearised at ``x``:
``max_{||delta||_p <= eps} delta . grad_x L = eps * ||grad_x L||_q`` with ``1/p + 1/q = 1``
(Hoelder's inequality, attained by the worst-case ``delta``). Applied to the input and/or the
outputs ``h_l`` of chosen stages, the training loss becomes
``L_total = L + lambda * sum_l ||dL/dh_l||_q``. The penalty is built with
``torch.autograd.grad(..., create_graph=True)``, so ``L_total.backward()`` differentiates through
the gradient (double back-propagation) and trains the weights to flatten the loss around the
data. Paper defaults: L2 norm, ``lambda = 1e-2``, the outputs of stages 1 and 2, no input term.

Usage in a training step::

    images.requires_grad_(include_input)  # only needed for the input term
    out = model.forward_train(images)
    loss = criterion(out, pids)           # mean over the batch
    hs = select_msgr_inputs(images, out.feature_maps, stages=(1, 2), include_input=False)
    (loss + 1e-2 * msgr_penalty(loss, hs)).backward()
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

# Gradient norm q by name; the perturbation ball it regularises against is the dual (p) ball.
_NORMS = {"l1": 1.0, "l2": 2.0, "linf": float("inf")}


def msgr_penalty(
    loss: Tensor,
    inputs: Sequence[Tensor],
    norm: str = "l2",
    loss_reduction: str = "mean",
    grad_scale: float = 1.0,
) -> Tensor:
    """The MSGR penalty ``sum_h mean_b ||G_b(h)||_q``, differentiable w.r.t. the weights.

    ``norm`` names the norm q taken of the gradient; it is the dual of the norm p bounding the
    perturbation (``1/p + 1/q = 1``):

    * ``"l2"``: q = 2, robustness to an L2 ball (the paper's choice, best in its Table III);
    * ``"l1"``: q = 1, the dual of an L_inf ball (every element perturbed by at most eps);
    * ``"linf"``: q = inf (largest absolute element), the dual of an L1 ball (the whole budget
      spent on one element).

    What is computed, exactly: with ``g = dloss/dh`` (one ``autograd.grad`` call for all inputs)
    and ``g_b`` its slice for sample b, the per-sample gradient is ``G_b = B * g_b`` when
    ``loss_reduction="mean"`` (``loss`` is a batch mean, so ``B * g`` is the gradient of the
    *summed* per-sample losses) and ``G_b = g_b`` when ``"sum"``. The norms of the flattened
    ``G_b`` are averaged over the batch and summed over the inputs. For a mean loss this equals
    ``sum_h sum_b ||g_b||_q``, so the penalty does not shrink as the batch grows. When sample b's
    loss depends on sample b only (cross entropy, BN in eval mode), ``G_b`` is exactly
    ``d loss_b / d h_b``, the paper's per-image gradient; with train-mode BatchNorm or a
    batch-hard triplet loss samples are coupled, and ``G_b`` is the gradient of the summed loss
    w.r.t. sample b's slice (it includes b's effect on the other samples' losses).

    Args:
        loss: scalar, the training loss, still attached to its graph.
        inputs: tensors ``(B, ...)`` the loss was computed from (input images with
            ``requires_grad`` set, stage outputs), each used in ``loss``'s graph.
        norm: ``"l2"``, ``"l1"`` or ``"linf"`` (see above).
        loss_reduction: how ``loss`` was reduced over the batch, ``"mean"`` or ``"sum"``.
        grad_scale: mixed precision (CUDA float16 autocast): the grad scaler's current scale.
            PyTorch's gradient-penalty recipe for AMP is followed: the gradient is taken of
            ``grad_scale * loss`` (so float16 activations' gradients do not underflow), then
            unscaled, and the norms are computed in float32. 1 (no scaling) elsewhere.

    Returns:
        Scalar, >= 0, with a graph back to the weights (``create_graph=True``).

    Raises:
        ValueError: unknown ``norm`` or ``loss_reduction``, a non-scalar ``loss``, no inputs, an
            input that does not require grad or is not part of ``loss``'s graph.
    """
    q = _check_args(loss, inputs, norm, loss_reduction)
    if not (grad_scale > 0 and math.isfinite(grad_scale)):
        raise ValueError(f"grad_scale must be a finite number > 0, got {grad_scale!r}")
    scaled = loss * grad_scale if grad_scale != 1.0 else loss
    grads = torch.autograd.grad(scaled, list(inputs), create_graph=True, allow_unused=True)
    dtype = torch.promote_types(loss.dtype, torch.float32)  # at least float32 (float64 stays)
    total = loss.new_zeros((), dtype=dtype)
    for i, (h, g) in enumerate(zip(inputs, grads)):
        if g is None:
            raise ValueError(f"inputs[{i}] is not part of the loss's graph (no gradient flows to it)")
        g = g.to(torch.promote_types(g.dtype, dtype))
        g = g / grad_scale if grad_scale != 1.0 else g  # unscaled, in float32 or wider
        scale = h.shape[0] if loss_reduction == "mean" else 1
        per_sample = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), ord=q, dim=1)  # (B,)
        total = total + scale * per_sample.mean()
    return total


def _check_args(loss: Tensor, inputs: Sequence[Tensor], norm: str, loss_reduction: str) -> float:
    """Validate :func:`msgr_penalty`'s arguments; return the gradient norm order q."""
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {', '.join(_NORMS)}, got {norm!r}")
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
    if loss.ndim != 0 or not loss.requires_grad:
        raise ValueError(f"loss must be a scalar attached to a graph, got shape {tuple(loss.shape)}")
    if len(inputs) == 0:
        raise ValueError("msgr_penalty needs at least one input tensor")
    for i, h in enumerate(inputs):
        if not h.requires_grad:
            msg = f"inputs[{i}] does not require grad; for images call images.requires_grad_() before the forward"
            raise ValueError(msg)
    return _NORMS[norm]


def select_msgr_inputs(
    images: Tensor, feature_maps: Sequence[Tensor], stages: Sequence[int], include_input: bool
) -> list[Tensor]:
    """The tensors MSGR regularises: optionally the images, then the chosen stage outputs.

    Stage numbers are 1-based, as in the paper: stage ``s`` is ``feature_maps[s - 1]``, the
    output of the s-th backbone stage (:class:`reidkit.models.ReIDOutput`). For ResNet-50, 1 is
    conv2 (``layer1``, 256 ch, stride 4) and 2 is conv3 (``layer2``, 512 ch, stride 8); for
    OSNet, conv2 and conv3; for MobileNetV2, the stride-4 and stride-8 stages. The paper's
    default is ``stages=(1, 2)``, ``include_input=False``.

    Args:
        images: ``(B, 3, H, W)`` the model's input; must require grad if ``include_input``
            (set ``images.requires_grad_()`` before the forward pass).
        feature_maps: the stage outputs of ``model.forward_train(images)``, shallow to deep,
            each ``(B, C_s, H_s, W_s)``.
        stages: 1-based stage numbers, each in ``1..len(feature_maps)``.
        include_input: put ``images`` first in the list.

    Returns:
        ``[images] + [feature_maps[s - 1] for s in stages]`` (images only if ``include_input``).

    Raises:
        ValueError: a stage number out of range, ``images`` not requiring grad while
            ``include_input``, or nothing selected.
    """
    bad = [s for s in stages if not 1 <= s <= len(feature_maps)]
    if bad:
        raise ValueError(f"stages are 1-based in 1..{len(feature_maps)} (1 = feature_maps[0]), got {bad}")
    if include_input and not images.requires_grad:
        raise ValueError("include_input needs images.requires_grad_() before the forward pass")
    selected = ([images] if include_input else []) + [feature_maps[s - 1] for s in stages]
    if not selected:
        raise ValueError("select_msgr_inputs: no stage given and include_input is False")
    return selected
