"""Single-gallery-shot protocol against a plain per-query loop over the same draws."""

import numpy as np
import pytest

from reidkit.evaluation.protocols import mean_and_std, single_gallery_shot


def _reference(dist, q_pids, g_pids, q_cams, g_cams, repeats, seed, max_rank):
    """Per draw and query: the rank of the query's only match among the drawn gallery."""
    ids = np.unique(g_pids[g_pids != -1])
    cmcs, aps = [], []
    for r in range(repeats):
        rng = np.random.default_rng(seed + r)
        chosen = sorted(int(rng.choice(np.flatnonzero(g_pids == pid))) for pid in ids)
        cmc, ap, valid = np.zeros(max_rank), [], 0
        for qi in range(len(q_pids)):
            kept = [j for j in chosen if not (g_pids[j] == q_pids[qi] and g_cams[j] == q_cams[qi])]
            order = sorted(kept, key=lambda j: (dist[qi, j], j))
            hits = [i for i, j in enumerate(order) if g_pids[j] == q_pids[qi]]
            if not hits:
                continue
            valid += 1
            cmc[hits[0]:] += 1
            ap.append(1.0 / (hits[0] + 1))
        cmcs.append(cmc / valid)
        aps.append(np.mean(ap))
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.std(aps))


def test_matches_a_per_query_loop():
    rng = np.random.default_rng(0)
    num_ids, q, g_per = 12, 12, 3
    q_pids = np.arange(num_ids)
    g_pids = np.repeat(np.arange(num_ids), g_per)
    dist = rng.random((q, len(g_pids))).astype(np.float32)
    dist[:, ::5] = 0.5  # ties
    q_cams, g_cams = np.zeros(q, dtype=np.int64), np.ones(len(g_pids), dtype=np.int64)
    result = single_gallery_shot(dist, q_pids, g_pids, q_cams, g_cams, repeats=5, seed=3, max_rank=10)
    cmc, mean_ap, std_ap = _reference(dist, q_pids, g_pids, q_cams, g_cams, 5, 3, 10)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-12)
    assert result.mAP == pytest.approx(mean_ap) and result.std["mAP"] == pytest.approx(std_ap)
    assert result.mINP == pytest.approx(mean_ap)  # one match per query: INP = AP = 1 / rank
    assert result.repeats == 5 and result.as_dict()["rank1"] == pytest.approx(cmc[0])


def test_repeats_and_summary():
    with pytest.raises(ValueError, match="repeats"):
        single_gallery_shot(np.zeros((1, 1)), [0], [0], [0], [1], repeats=0)
    summary = mean_and_std([{"rank1": 0.5, "mAP": 0.4}, {"rank1": 0.7, "mAP": 0.6}])
    assert summary["rank1"] == pytest.approx((0.6, 0.1))
