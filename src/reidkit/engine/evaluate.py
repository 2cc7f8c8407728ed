"""Evaluate a model on a dataset's query/gallery with the Market-1501 protocol."""

from __future__ import annotations

import torch
from torch import nn

from ..data import ReIDDataset
from ..data.loader import eval_loader
from ..data.transforms import TransformConfig, build_transforms
from ..evaluation import evaluate_rank_from_features
from ..evaluation.features import Features, extract_features
from .config import Config


class NonFiniteEmbeddings(ValueError):
    """The model produced NaN or infinite embeddings (a diverged or corrupted model)."""


def check_finite(features: Features, split: str, dataset: ReIDDataset | None = None) -> None:
    """Raise :class:`NonFiniteEmbeddings` naming the first image whose embedding is not finite.

    ``features.features: (N, D)``.
    """
    bad = (~torch.isfinite(features.features).all(dim=1)).nonzero().flatten()
    if len(bad):
        first = getattr(dataset, split)[int(bad[0])].img_path if dataset is not None else f"row {int(bad[0])}"
        raise NonFiniteEmbeddings(
            f"the model gives NaN/inf embeddings for {len(bad)} of {len(features.features)} {split} images "
            f"(first: {first})"
        )


def extract_split(model: nn.Module, dataset: ReIDDataset, split: str, cfg: Config, device: torch.device) -> Features:
    """Features of ``dataset.<split>`` (``"query"``, ``"gallery"`` or ``"train"``) with test transforms."""
    tcfg = TransformConfig(height=cfg.data.height, width=cfg.data.width)
    loader = eval_loader(
        getattr(dataset, split),
        dataset.load_image,
        build_transforms(tcfg, train=False),
        batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
    )
    return extract_features(
        model,
        loader,
        device,
        amp=cfg.eval.amp,
        channels_last=cfg.eval.channels_last,
        with_local=cfg.eval.local_weight > 0,
    )


def evaluate_model(model: nn.Module, dataset: ReIDDataset, cfg: Config, device: torch.device):
    """CMC / mAP / mINP of ``model`` on ``dataset``'s query and gallery.

    Features are L2-normalised when ``cfg.eval.normalize``; distance ``cfg.eval.metric``
    (smaller is closer).

    Returns:
        :class:`reidkit.evaluation.RankResult`.

    Raises:
        NonFiniteEmbeddings: the model's embeddings hold NaN or inf.
        ImageReadError: an image cannot be read (the message names it).
    """
    q = extract_split(model, dataset, "query", cfg, device)
    g = extract_split(model, dataset, "gallery", cfg, device)
    check_finite(q, "query", dataset)
    check_finite(g, "gallery", dataset)
    return evaluate_features(q, g, cfg)


def evaluate_features(q: Features, g: Features, cfg: Config):
    """CMC / mAP / mINP from query and gallery :class:`Features` (see :func:`evaluate_model`).

    With ``cfg.eval.local_weight > 0`` the distance is the global one plus that weight times the
    AlignedReID local distance (Zhang et al. 2017); that path holds the full
    ``(num_query, num_gallery)`` matrix.
    """
    qf, gf = q.features, g.features
    if cfg.eval.normalize:
        qf, gf = nn.functional.normalize(qf, dim=1), nn.functional.normalize(gf, dim=1)
    if cfg.eval.local_weight > 0:
        from ..evaluation import evaluate_rank
        from ..evaluation.aligned import combined_distance_matrix

        if q.local is None or g.local is None:
            raise ValueError("eval.local_weight > 0 needs a model with a local branch (e.g. mobilenet_v2_aligned)")
        distmat = combined_distance_matrix(qf, gf, q.local, g.local, cfg.eval.metric, cfg.eval.local_weight)
        return evaluate_rank(distmat, q.pids, g.pids, q.camids, g.camids, max_rank=cfg.eval.max_rank)
    return evaluate_rank_from_features(
        qf, gf, q.pids, g.pids, q.camids, g.camids, metric=cfg.eval.metric, max_rank=cfg.eval.max_rank
    )
