"""Evaluate a model on a dataset's query/gallery with the Market-1501 protocol."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import ReIDDataset
from ..data.loader import eval_loader, extraction_workers
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
    """Features of ``dataset.<split>`` (``"query"``, ``"gallery"`` or ``"train"``) with test transforms.

    Under torchrun every process embeds its contiguous 1/N share and the shares are gathered
    in order, so every process returns the features of the whole split.
    """
    from .distributed import current, gather_objects, shard

    tcfg = TransformConfig(height=cfg.data.height, width=cfg.data.width)
    samples = getattr(dataset, split)
    distributed = current().active
    loader = eval_loader(
        shard(samples) if distributed else samples,
        dataset.load_image,
        build_transforms(tcfg, train=False),
        batch_size=cfg.data.eval_batch_size,
        num_workers=extraction_workers(cfg.eval.num_workers, cfg.data.num_workers),
    )
    features = extract_features(
        model,
        loader,
        device,
        amp=cfg.eval.amp,
        channels_last=cfg.eval.channels_last,
        with_local=cfg.eval.local_weight > 0,
        flip=cfg.eval.flip,
        backend=cfg.eval.backend,
    )
    if not distributed:
        return features
    parts = gather_objects(tuple(features))
    local = None if parts[0][3] is None else torch.cat([p[3] for p in parts])
    return Features(torch.cat([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                    np.concatenate([p[2] for p in parts]), local)


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


def prepare_features(qf: torch.Tensor, gf: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and gallery embeddings as ``cfg.eval`` asks before any distance: L2 normalisation
    (``normalize``), then alpha query expansion of the queries (``aqe``, Radenovic et al. 2018).

    ``qf: (Q, D)``, ``gf: (G, D)`` -> the same shapes, float32.
    """
    e = cfg.eval
    if e.normalize:
        qf, gf = nn.functional.normalize(qf, dim=1), nn.functional.normalize(gf, dim=1)
    if e.aqe is not None:
        from ..evaluation import alpha_query_expansion

        qf = alpha_query_expansion(qf, gf, **e.aqe)
    return qf, gf


def query_gallery_distances(qf: torch.Tensor, gf: torch.Tensor, cfg: Config) -> torch.Tensor:
    """``(Q, G)`` float32 distances (smaller is closer) of prepared features
    (:func:`prepare_features`): k-reciprocal re-ranking when ``cfg.eval.rerank`` (Zhong et al.
    2017; squared Euclidean original distance, whatever ``metric``), else ``cfg.eval.metric``."""
    from ..evaluation import compute_distance_matrix, re_ranking

    if cfg.eval.rerank is not None:
        return re_ranking(qf, gf, **cfg.eval.rerank)
    return compute_distance_matrix(qf, gf, cfg.eval.metric)


def evaluate_features(q: Features, g: Features, cfg: Config):
    """CMC / mAP / mINP from query and gallery :class:`Features` (see :func:`evaluate_model`).

    In order, as ``cfg.eval`` asks: :func:`prepare_features` (normalisation, query expansion);
    the distance: :func:`query_gallery_distances` (re-ranking or ``metric``), or the global
    distance plus ``local_weight`` times the AlignedReID local distance (Zhang et al. 2017);
    then the full-gallery Market-1501 protocol, or single-gallery-shot averaged over
    ``single_shot_repeats`` seeded draws (:mod:`reidkit.evaluation.protocols`). The plain path
    never holds the ``(num_query, num_gallery)`` matrix; the others do.

    Raises:
        ValueError: ``local_weight > 0`` with a model without a local branch.
    """
    from ..evaluation import evaluate_rank
    from ..evaluation.protocols import single_gallery_shot

    e = cfg.eval
    qf, gf = prepare_features(q.features, g.features, cfg)
    if e.local_weight > 0 and e.rerank is None:
        from ..evaluation.aligned import combined_distance_matrix

        if q.local is None or g.local is None:
            raise ValueError("eval.local_weight > 0 needs a model with a local branch (e.g. mobilenet_v2_aligned)")
        distmat = combined_distance_matrix(qf, gf, q.local, g.local, e.metric, e.local_weight)
    elif e.rerank is not None or e.single_shot_repeats:
        distmat = query_gallery_distances(qf, gf, cfg)
    else:
        return evaluate_rank_from_features(
            qf, gf, q.pids, g.pids, q.camids, g.camids, metric=e.metric, max_rank=e.max_rank
        )
    if e.single_shot_repeats:
        return single_gallery_shot(distmat, q.pids, g.pids, q.camids, g.camids, repeats=e.single_shot_repeats,
                                   seed=cfg.seed, max_rank=e.max_rank)
    return evaluate_rank(distmat, q.pids, g.pids, q.camids, g.camids, max_rank=e.max_rank)
