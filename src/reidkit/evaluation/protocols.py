"""Evaluation protocols beyond the Market-1501 rules: single-gallery-shot CMC.

The classic CUHK01 / CUHK03 numbers (e.g. the MSP-CNN seed's tables) are *single-gallery-shot*:
the gallery holds one image per identity. reidkit draws that gallery at random, ``repeats``
times with seeds ``seed, seed + 1, ...`` (one image per gallery pid, junk pid -1 dropped; a
distractor pid 0 is one identity like any other), evaluates each draw with
:func:`~reidkit.evaluation.evaluate_rank` (Market rules: same pid and camera dropped, so a query
whose only gallery match shares its camera is skipped), and averages CMC, mAP and mINP over the
draws; their standard deviations over the draws are reported too. With one match per query,
AP and INP both equal the reciprocal rank of that match. torchreid's ``eval_cuhk03`` draws per
query instead of per repeat; both estimate the same expectation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .rank import ArrayLike, RankResult, evaluate_rank


@dataclass(frozen=True, eq=False)
class SingleShotResult(RankResult):
    """:class:`RankResult` averaged over random single-gallery-shot draws.

    Attributes:
        repeats: number of draws averaged.
        std: standard deviation over the draws of each :meth:`as_dict` entry (fractions).
    """

    repeats: int = 1
    std: dict | None = None


def single_gallery_shot(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    repeats: int = 10,
    seed: int = 0,
    max_rank: int = 50,
) -> SingleShotResult:
    """Single-gallery-shot CMC / mAP / mINP, averaged over ``repeats`` seeded gallery draws.

    Args:
        distmat: ``(num_query, num_gallery)`` distances, smaller is closer.
        q_pids, g_pids, q_camids, g_camids: as :func:`~reidkit.evaluation.evaluate_rank`.
        repeats: draws of one gallery image per identity (>= 1).
        seed: seed of the first draw (``numpy.random.default_rng(seed + r)`` for draw r).
        max_rank: CMC length (clipped to the number of gallery identities).

    Returns:
        :class:`SingleShotResult` (means, with ``std`` over the draws).

    Raises:
        ValueError: ``repeats < 1``, or as :func:`~reidkit.evaluation.evaluate_rank`.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    g = np.asarray(g_pids.cpu() if isinstance(g_pids, torch.Tensor) else g_pids).astype(np.int64)
    groups = [np.flatnonzero(g == pid) for pid in np.unique(g[g != -1])]
    max_rank = min(max_rank, len(groups))
    runs = []
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        chosen = np.sort(np.array([rng.choice(idx) for idx in groups]))  # (num_ids,)
        sub = distmat[:, chosen] if isinstance(distmat, np.ndarray) else distmat[:, torch.as_tensor(chosen)]
        runs.append(evaluate_rank(sub, q_pids, g[chosen], q_camids, _take(g_camids, chosen), max_rank=max_rank))
    return _average(runs)


def _take(values: ArrayLike, index: np.ndarray) -> np.ndarray:
    return np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)[index]


def _average(runs: list[RankResult]) -> SingleShotResult:
    """Mean CMC / mAP / mINP of several results, with the standard deviation of each entry."""
    table = {key: np.array([r.as_dict()[key] for r in runs]) for key in runs[0].as_dict()}
    cmc = np.mean([r.cmc for r in runs], axis=0)
    cmc.setflags(write=False)
    return SingleShotResult(
        cmc=cmc,
        mAP=float(table["mAP"].mean()),
        mINP=float(table["mINP"].mean()),
        num_valid_queries=int(np.mean([r.num_valid_queries for r in runs])),
        num_skipped_queries=int(np.mean([r.num_skipped_queries for r in runs])),
        repeats=len(runs),
        std={key: float(values.std()) for key, values in table.items()},
    )


def mean_and_std(results: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """``key -> (mean, standard deviation)`` over several metric dicts (e.g. the 10 splits)."""
    keys = [k for k in results[0] if all(k in r for r in results)]
    return {k: (float(np.mean([r[k] for r in results])), float(np.std([r[k] for r in results]))) for k in keys}
