"""Mutual learning terms against plain loops, and their stop-gradients."""

import itertools
import math

import pytest
import torch

from reidkit.losses.mutual import deep_mutual_loss, metric_mutual_loss


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))


@pytest.mark.parametrize("num_peers", [2, 3])
def test_deep_mutual_loss_matches_loop(num_peers):
    torch.manual_seed(num_peers)
    logits = [torch.randn(4, 5) for _ in range(num_peers)]
    probs = [[softmax(r) for r in z.tolist()] for z in logits]
    expected = 0.0
    for i in range(num_peers):
        others = [j for j in range(num_peers) if j != i]
        per_j = [sum(kl(probs[j][b], probs[i][b]) for b in range(4)) / 4 for j in others]
        expected += sum(per_j) / len(per_j)
    assert math.isclose(deep_mutual_loss(logits).item(), expected, rel_tol=1e-5)


def test_metric_mutual_loss_matches_loop():
    torch.manual_seed(0)
    feats = [torch.randn(5, 3), torch.randn(5, 7)]
    mats = [[[math.dist(a, b) for b in f.tolist()] for a in f.tolist()] for f in feats]
    sq = sum((mats[0][r][c] - mats[1][r][c]) ** 2 for r, c in itertools.product(range(5), range(5))) / 25
    assert math.isclose(metric_mutual_loss(feats).item(), 2 * sq, rel_tol=1e-4)


def test_other_peer_receives_no_gradient_from_my_term():
    torch.manual_seed(1)
    z0, z1 = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    (g_total,) = torch.autograd.grad(deep_mutual_loss([z0, z1]), z1)
    # peer 1's own term alone: KL(sg(p0) || p1)
    own = torch.nn.functional.kl_div(
        torch.log_softmax(z1, 1), torch.log_softmax(z0, 1).detach(), reduction="batchmean", log_target=True
    )
    (g_own,) = torch.autograd.grad(own, z1)
    torch.testing.assert_close(g_total, g_own)
    f0, f1 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    (gm,) = torch.autograd.grad(metric_mutual_loss([f0, f1]), f1)
    d0 = torch.cdist(f0, f0).detach()
    (gm_own,) = torch.autograd.grad(((torch.cdist(f1, f1) - d0) ** 2).mean(), f1)
    torch.testing.assert_close(gm, gm_own, atol=1e-5, rtol=1e-4)


def test_errors():
    with pytest.raises(ValueError, match="at least 2"):
        deep_mutual_loss([torch.randn(2, 3)])
    with pytest.raises(ValueError, match="one shape"):
        deep_mutual_loss([torch.randn(2, 3), torch.randn(2, 4)])
    with pytest.raises(ValueError, match="batch size"):
        metric_mutual_loss([torch.randn(2, 3), torch.randn(3, 3)])
