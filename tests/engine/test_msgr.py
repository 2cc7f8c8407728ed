"""MSGR (AMSFL's gradient regulariser) against per-sample autograd loops and finite differences."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidkit.engine.msgr import msgr_penalty, select_msgr_inputs
from reidkit.models import create_model

ORD = {"l1": 1, "l2": 2, "linf": float("inf")}


class TinyNet(nn.Module):
    """x (B, 2, 4, 4) -> h1 (B, 3, 4, 4) -> h2 (B, 4, 2, 2) -> logits (B, 5); no BN, so samples
    are independent."""

    def __init__(self, act=torch.tanh):
        super().__init__()
        self.act = act
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h1 = self.act(self.c1(x))
        h2 = self.act(self.c2(h1))
        return self.fc(h2.flatten(1)), [h1, h2]


def _data(dtype=torch.float64, batch=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 2, 4, 4, generator=g, dtype=dtype), torch.tensor([0, 3, 1, 3][:batch])


def _per_sample_reference(net, x, y, norm):
    """sum over inputs (x, h1, h2) of the mean over samples of ||d loss_b / d input_b||, each
    sample run through the network on its own."""
    totals = torch.zeros(3, dtype=x.dtype)
    for b in range(len(x)):
        xb = x[b : b + 1].clone().requires_grad_(True)
        logits, hs = net(xb)
        grads = torch.autograd.grad(F.cross_entropy(logits, y[b : b + 1]), [xb, *hs])
        totals += torch.stack([torch.linalg.vector_norm(g.flatten(), ORD[norm]) for g in grads])
    return (totals / len(x)).sum()


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_penalty_equals_per_sample_gradient_norms(norm):
    torch.manual_seed(0)
    net = TinyNet().double()
    x, y = _data()
    x.requires_grad_(True)
    logits, hs = net(x)
    per_sample = F.cross_entropy(logits, y, reduction="none")  # (B,)
    want = _per_sample_reference(net, x.detach(), y, norm)
    got_mean = msgr_penalty(per_sample.mean(), [x, *hs], norm=norm)
    got_sum = msgr_penalty(per_sample.sum(), [x, *hs], norm=norm, loss_reduction="sum")
    torch.testing.assert_close(got_mean, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_sum, want, rtol=1e-10, atol=1e-12)


def _weight_grads(net, x, y, penalty_weight):
    net.zero_grad()
    logits, hs = net(x)
    loss = F.cross_entropy(logits, y)
    if penalty_weight is not None:
        loss = loss + penalty_weight * msgr_penalty(loss, hs)
    loss.backward()
    return [p.grad.clone() for p in net.parameters()]


def test_zero_weight_leaves_weight_gradients_unchanged():
    torch.manual_seed(0)
    net = TinyNet(act=torch.relu)
    x, y = _data(torch.float32)
    plain = _weight_grads(net, x, y, None)
    zero = _weight_grads(net, x, y, 0.0)
    some = _weight_grads(net, x, y, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, zero))
    assert any(not torch.allclose(a, b) for a, b in zip(plain, some))  # the penalty does act


def _penalty(net, x, y):
    logits, hs = net(x)
    loss = F.cross_entropy(logits, y)
    return msgr_penalty(loss, hs, norm="l2")


def test_double_backprop_matches_finite_differences():
    torch.manual_seed(0)
    net = TinyNet().double()
    x, y = _data()
    (analytic,) = torch.autograd.grad(_penalty(net, x, y), net.c1.weight)  # first layer: only
    assert analytic.abs().max() > 1e-6  # reachable through the gradient graph
    eps = 1e-6
    w = net.c1.weight.data
    for idx in [(0, 0, 0, 0), (1, 1, 2, 1), (2, 0, 1, 2)]:
        old = w[idx].item()
        w[idx] = old + eps
        up = _penalty(net, x, y).item()
        w[idx] = old - eps
        down = _penalty(net, x, y).item()
        w[idx] = old
        assert (up - down) / (2 * eps) == pytest.approx(analytic[idx].item(), rel=1e-6, abs=1e-9)


def test_bad_inputs_raise():
    net = TinyNet()
    x, y = _data(torch.float32)
    logits, hs = net(x)
    loss = F.cross_entropy(logits, y)
    with pytest.raises(ValueError, match="norm"):
        msgr_penalty(loss, hs, norm="l3")
    with pytest.raises(ValueError, match="not part"):
        msgr_penalty(loss, [torch.randn(4, 3, requires_grad=True)])
    with pytest.raises(ValueError, match="requires_grad"):
        msgr_penalty(loss, [x])  # images without requires_grad
    with pytest.raises(ValueError, match="scalar"):
        msgr_penalty(F.cross_entropy(logits, y, reduction="none"), hs)
    with pytest.raises(ValueError, match="at least one"):
        msgr_penalty(loss, [])


def test_select_maps_one_based_stages_to_feature_maps():
    images = torch.randn(2, 3, 8, 4, requires_grad=True)
    maps = [torch.randn(2, 1) for _ in range(4)]
    got = select_msgr_inputs(images, maps, stages=[1, 2], include_input=True)
    assert got[0] is images and got[1] is maps[0] and got[2] is maps[1] and len(got) == 3
    assert select_msgr_inputs(images, maps, stages=[4], include_input=False)[0] is maps[3]
    for stages in ([0], [5]):
        with pytest.raises(ValueError, match="1-based"):
            select_msgr_inputs(images, maps, stages=stages, include_input=False)
    with pytest.raises(ValueError, match="requires_grad"):
        select_msgr_inputs(images.detach(), maps, stages=[1], include_input=True)
    with pytest.raises(ValueError, match="no stage"):
        select_msgr_inputs(images, maps, stages=[], include_input=False)


def test_penalty_on_msfl_model_reaches_the_stem():
    torch.manual_seed(0)
    model = create_model("osnet_x0_25_msfl", num_classes=3).train()
    images = torch.randn(4, 3, 64, 32, requires_grad=True)
    out = model.forward_train(images)
    loss = F.cross_entropy(out.logits, torch.tensor([0, 0, 1, 2]))
    penalty = msgr_penalty(loss, select_msgr_inputs(images, out.feature_maps, [1, 2], include_input=True))
    (stem,) = torch.autograd.grad(penalty, model.backbone.stem[0][0].weight)
    assert torch.isfinite(penalty) and penalty > 0
    assert torch.isfinite(stem).all() and stem.abs().sum() > 0


def test_grad_scale_is_undone():
    """The AMP recipe: the gradient of scale * loss, unscaled, gives the same penalty."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(6, 3, requires_grad=True)
    loss = (x @ w).tanh().pow(2).mean()
    plain = msgr_penalty(loss, [x])
    scaled = msgr_penalty(loss, [x], grad_scale=2.0**16)
    torch.testing.assert_close(plain, scaled, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="grad_scale"):
        msgr_penalty(loss, [x], grad_scale=0.0)
