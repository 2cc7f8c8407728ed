"""PAUL's losses against plain references: PEDAL and its memory update, cyclic ranking, IPFL,
and the positive-view augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms import v2

from reidkit.data.paul_augment import TwoViews, positive_view_transform
from reidkit.data.transforms import TransformConfig, build_transforms
from reidkit.losses.ipfl import IPFLLoss, cyclic_ranking_negatives, ipfl_loss
from reidkit.losses.pedal import PatchMemoryBank

N, M, D = 20, 3, 8


def _bank(filled: int = N, k: int = 4, scale: float = 10.0, seed: int = 0) -> PatchMemoryBank:
    torch.manual_seed(seed)
    bank = PatchMemoryBank(N, M, D, k=k, scale=scale)
    idx = torch.randperm(N)[:filled]
    bank.fill(torch.randn(filled, M, D), idx)
    return bank


def _pedal_reference(bank: PatchMemoryBank, feats: torch.Tensor, indices: torch.Tensor) -> float:
    """Loop over patches and images with the authors' squared-distance form, exp(-s/2 ||x - m||^2)."""
    total = 0.0
    for m in range(M):
        for b, i in enumerate(indices.tolist()):
            x = feats[b, m] / feats[b, m].norm()
            others = [j for j in range(N) if j != i and bool(bank.filled[j])]
            d2 = sorted(float((x - bank.memory[m, j]).pow(2).sum()) for j in others)
            terms = [math.exp(-bank.scale / 2 * v) for v in d2]
            total += -math.log(sum(terms[: bank.k]) / sum(terms))
    return total / (M * len(indices))


@pytest.mark.parametrize("filled", [N, 12])
def test_pedal_matches_a_direct_loop(filled):
    bank = _bank(filled)
    feats = torch.randn(5, M, D)
    indices = torch.tensor([0, 3, 7, 11, 19])
    got = bank.loss(feats, indices)
    assert got.item() == pytest.approx(_pedal_reference(bank, feats, indices), rel=1e-5)
    assert got.item() >= 0


def test_pedal_gradient_flows_to_features_not_to_the_bank():
    bank = _bank()
    memory = bank.memory.clone()
    feats = torch.randn(4, M, D, requires_grad=True)
    bank(feats, torch.tensor([1, 2, 3, 4])).backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    assert torch.equal(bank.memory, memory) and not bank.memory.requires_grad


def test_memory_update_formula():
    bank = PatchMemoryBank(N, M, D, momentum=0.3)
    old = F.normalize(torch.randn(N, M, D), dim=2)
    bank.fill(old[:10], torch.arange(10))  # entries 10.. stay empty
    feats = torch.randn(3, M, D)
    indices = torch.tensor([2, 15, 9])
    before = bank.memory.clone()
    bank.update(feats, indices)
    for b, i in enumerate(indices.tolist()):
        for m in range(M):
            x = feats[b, m] / feats[b, m].norm()
            want = x if i >= 10 else (0.7 * old[i, m] + 0.3 * x) / (0.7 * old[i, m] + 0.3 * x).norm()
            torch.testing.assert_close(bank.memory[m, i], want)
    untouched = [j for j in range(N) if j not in indices.tolist()]
    torch.testing.assert_close(bank.memory[:, untouched], before[:, untouched])
    assert bank.filled.tolist() == [j < 10 or j == 15 for j in range(N)]


def test_bank_state_dict_round_trip_gives_the_same_loss():
    bank = _bank(filled=15)
    copy = PatchMemoryBank(N, M, D, k=4, scale=10.0)
    copy.load_state_dict(bank.state_dict())
    assert set(bank.state_dict()) == {"memory", "filled"}
    feats, indices = torch.randn(3, M, D), torch.tensor([0, 5, 6])
    assert torch.equal(copy.loss(feats, indices), bank.loss(feats, indices))


def test_bank_size_and_bad_input():
    assert PatchMemoryBank.nbytes(10**5, 6, 256) == 614_400_000
    bank = _bank()
    with pytest.raises(ValueError, match="distinct"):
        bank.loss(torch.randn(2, M, D), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        bank.update(torch.randn(2, M, D), torch.tensor([1, 20]))
    with pytest.raises(ValueError, match="int64"):
        bank.loss(torch.randn(2, M, D), torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\(B, 3, 8\)"):
        bank.loss(torch.randn(2, M, D + 1), torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="fill"):
        PatchMemoryBank(N, M, D, k=10).loss(torch.randn(2, M, D), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="momentum"):
        PatchMemoryBank(N, M, D, momentum=0.0)


def _cyclic_reference(dist: torch.Tensor, r: int) -> list[int]:
    """Walk each ranked list from the top; accept j when i is not in j's own top-r."""
    b = dist.shape[0]
    ranked = [sorted((j for j in range(b) if j != i), key=lambda j: float(dist[i, j])) for i in range(b)]
    out = []
    for i in range(b):
        out.append(next((j for j in ranked[i] if i not in ranked[j][:r]), -1))
    return out


@pytest.mark.parametrize("seed,b,r", [(0, 8, 3), (1, 12, 3), (2, 10, 1), (3, 6, 2), (4, 4, 3)])
def test_cyclic_ranking_matches_a_loop(seed, b, r):
    torch.manual_seed(seed)
    x = torch.randn(b, 5)
    dist = torch.cdist(x, x)
    assert cyclic_ranking_negatives(dist, r).tolist() == _cyclic_reference(dist, r)


def test_cyclic_ranking_skips_a_mutual_neighbour():
    # 0 and 1 are mutual nearest neighbours; 2 is next to 0 but its own nearest is 3.
    x = torch.tensor([[0.0], [0.1], [0.5], [0.55], [3.0]])
    neg = cyclic_ranking_negatives(torch.cdist(x, x), r=1)
    assert neg[0].item() == 2  # 1 is rejected: 0 is 1's top-1


def test_ipfl_matches_a_loop_and_backpropagates():
    torch.manual_seed(5)
    anchor = torch.randn(10, 6, requires_grad=True)
    positive = (anchor.detach() + 0.3 * torch.randn(10, 6)).requires_grad_(True)
    got = ipfl_loss(anchor, positive, margin=3.0, r=3)
    x, p = anchor.detach(), positive.detach()
    dist = torch.cdist(x, x)
    terms = []
    for i, j in enumerate(_cyclic_reference(dist, 3)):
        if j >= 0:
            terms.append(max(0.0, 3.0 + float((x[i] - p[i]).norm()) - float(dist[i, j])))
    assert sum(terms) > 0  # the hinge is active for some anchors
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    got.backward()
    assert anchor.grad.abs().sum() > 0 and positive.grad.abs().sum() > 0
    assert IPFLLoss(margin=3.0, r=3)(anchor, positive).item() == pytest.approx(got.item())


def test_ipfl_without_negatives_is_zero_and_bad_input_raises():
    anchor = torch.randn(3, 4, requires_grad=True)
    loss = ipfl_loss(anchor, torch.randn(3, 4), r=3)  # B - 1 <= r: every candidate rejected
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match="positive"):
        ipfl_loss(anchor, torch.randn(3, 5))
    with pytest.raises(ValueError, match="B >= 2"):
        ipfl_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="r must"):
        IPFLLoss(r=0)


def _image() -> Image.Image:
    g = torch.Generator().manual_seed(0)
    return Image.fromarray((torch.rand(80, 30, 3, generator=g) * 255).to(torch.uint8).numpy())


def test_positive_view_parameters_and_output():
    tf = positive_view_transform(height=64, width=32)
    ops = {type(op): op for op in tf.transforms}
    jitter = ops[v2.ColorJitter]
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.8, 1.2) and jitter.hue is None
    assert list(ops[v2.RandomRotation].degrees) == [-10.0, 10.0]
    assert ops[v2.RandomResizedCrop].scale == (0.7, 0.95)
    torch.manual_seed(0)
    a, b = tf(_image()), tf(_image())
    assert a.shape == (3, 64, 32) and a.dtype == torch.float32 and not torch.equal(a, b)


def test_positive_view_without_augmentation_is_the_plain_transform():
    tf = positive_view_transform(height=64, width=32, crop_scale=(1.0, 1.0), degrees=0.0, jitter=0.0, flip_p=0.0)
    plain = build_transforms(TransformConfig(height=64, width=32), train=False)
    torch.testing.assert_close(tf(_image()), plain(_image()), atol=1e-5, rtol=0)
    pair = TwoViews(plain, tf)(_image())
    assert len(pair) == 2 and pair[0].shape == pair[1].shape == (3, 64, 32)
    with pytest.raises(ValueError, match="crop_scale"):
        positive_view_transform(crop_scale=(0.9, 0.7))
