"""Alpha query expansion and database augmentation against plain per-query loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidkit.evaluation import alpha_database_augmentation, alpha_query_expansion


def loop_expansion(qf: np.ndarray, gf: np.ndarray, k: int, alpha: float, skip_self: bool = False) -> np.ndarray:
    """Per query: cosine similarities, the k largest (stable order), weights max(s, 0) ** alpha."""
    out = []
    for i, q in enumerate(qf):
        q = q / np.linalg.norm(q)
        sims = [(float(q @ g) / np.linalg.norm(g), j) for j, g in enumerate(gf) if not (skip_self and j == i)]
        top = sorted(sims, key=lambda t: -t[0])[:k]
        new = q.copy()
        for s, j in top:
            new += max(s, 0.0) ** alpha * gf[j] / np.linalg.norm(gf[j])
        out.append(new / np.linalg.norm(new))
    return np.array(out)


@pytest.fixture
def features() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 16, generator=g, dtype=torch.float64)
    q = centres[torch.arange(12) % 8] + 0.7 * torch.randn(12, 16, generator=g, dtype=torch.float64)
    gal = centres[torch.arange(60) % 8] + 0.7 * torch.randn(60, 16, generator=g, dtype=torch.float64)
    return 2.5 * q, gal  # not normalised: the functions normalise


@pytest.mark.parametrize("k,alpha", [(5, 3.0), (1, 1.0), (10, 0.0), (60, 2.0), (0, 3.0)])
def test_query_expansion_matches_loop(features, k, alpha):
    qf, gf = features
    ours = alpha_query_expansion(qf, gf, k=k, alpha=alpha)
    assert ours.shape == qf.shape and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), loop_expansion(qf.numpy(), gf.numpy(), k, alpha), atol=1e-10)


def test_query_expansion_float32_and_numpy(features):
    qf, gf = features
    ours = alpha_query_expansion(qf.float().numpy(), gf.float().numpy(), k=4, alpha=3)
    assert ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), loop_expansion(qf.numpy(), gf.numpy(), 4, 3), atol=1e-5)


def test_negative_similarities_add_nothing():
    qf = torch.tensor([[1.0, 0.0]])
    gf = torch.tensor([[-1.0, 0.1], [0.0, 1.0]])
    out = alpha_query_expansion(qf, gf, k=2, alpha=1.0)  # s = -0.995 (clamped to 0) and 0
    torch.testing.assert_close(out, qf)


@pytest.mark.parametrize("k,alpha", [(3, 3.0), (59, 0.5)])
def test_database_augmentation_matches_loop(features, k, alpha):
    _, gf = features
    ours = alpha_database_augmentation(gf, k=k, alpha=alpha)
    expected = loop_expansion(gf.numpy(), gf.numpy(), k, alpha, skip_self=True)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-10)


def test_small_blocks_give_the_same_result(features, monkeypatch):
    import reidkit.evaluation.query_expansion as qe

    qf, gf = features
    expected = alpha_query_expansion(qf, gf, k=5)
    monkeypatch.setattr(qe, "MEMORY_BUDGET_BYTES", 1)  # one query per block
    torch.testing.assert_close(alpha_query_expansion(qf, gf, k=5), expected)
    torch.testing.assert_close(
        alpha_database_augmentation(gf, k=5), torch.from_numpy(loop_expansion(gf.numpy(), gf.numpy(), 5, 3.0, True))
    )


def test_bad_input(features):
    qf, gf = features
    with pytest.raises(ValueError, match=r"k must be an integer in \[0, 60\]"):
        alpha_query_expansion(qf, gf, k=61)
    with pytest.raises(ValueError, match=r"k must be an integer in \[0, 59\]"):
        alpha_database_augmentation(gf, k=60)
    with pytest.raises(ValueError, match="alpha"):
        alpha_query_expansion(qf, gf, alpha=-1)
    with pytest.raises(ValueError, match="same D"):
        alpha_query_expansion(qf, gf[:, :3])
    with pytest.raises(ValueError, match="non-empty 2-D"):
        alpha_query_expansion(qf[:0], gf)
    with pytest.raises(TypeError, match="gallery_features"):
        alpha_query_expansion(qf, "gallery.npy")
