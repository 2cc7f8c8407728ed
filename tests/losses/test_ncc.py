"""ncc_best_match and NCCLoss vs. plain Python loops over patches and search positions."""

import math

import pytest
import torch

from reidkit.losses import CrossEntropyLoss, build_loss
from reidkit.losses.ncc import NCCLoss, ncc_best_match
from reidkit.models import ReIDOutput, create_model

EPS = 1e-4  # ncc_best_match's default relative flatness threshold


def _patch_vector(fmap, y, x, ph, pw):
    """The C x ph x pw values of the patch with top-left (y, x), as a flat list."""
    return [fmap[c][y + i][x + j] for c in range(len(fmap)) for i in range(ph) for j in range(pw)]


def _norm(u):
    return math.sqrt(sum(t * t for t in u))


def _ncc(u, v):
    """NCC of two flat vectors; 0 when one is constant (centred norm <= EPS x its norm)."""
    du, dv = [t - sum(u) / len(u) for t in u], [t - sum(v) / len(v) for t in v]
    if _norm(du) <= EPS * _norm(u) or _norm(dv) <= EPS * _norm(v):
        return 0.0
    return sum(p * q for p, q in zip(du, dv)) / (_norm(du) * _norm(dv))


def _loop_best_match(a, b, patch, search, stride):
    """Reference: (N, P) nested lists, loops over a's patch grid and b's window positions."""
    ph, pw = patch
    sr, sc = patch if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    height, width = a.shape[2:]
    half_r = height if search[0] is None else search[0] // 2
    half_c = width if search[1] is None else search[1] // 2
    out = []
    for fa, fb in zip(a.tolist(), b.tolist()):
        row = []
        for y in range(0, height - ph + 1, sr):
            for x in range(0, width - pw + 1, sc):
                u = _patch_vector(fa, y, x, ph, pw)
                row.append(max(
                    _ncc(u, _patch_vector(fb, y2, x2, ph, pw))
                    for y2 in range(height - ph + 1) if abs(y2 - y) <= half_r
                    for x2 in range(width - pw + 1) if abs(x2 - x) <= half_c
                ))
        out.append(row)
    return out


CASES = [
    ((2, 2), (3, None), 1),
    ((3, 3), (5, 3), None),
    ((2, 3), (1, 1), (2, 1)),
    ((3, 2), (4, 5), (1, 2)),
    ((1, 1), (None, None), None),
]


@pytest.mark.parametrize("patch,search,stride", CASES)
def test_best_match_matches_loop(patch, search, stride):
    torch.manual_seed(0)
    a, b = torch.randn(2, 2, 6, 5), torch.randn(2, 2, 6, 5)
    got = ncc_best_match(a, b, patch, search, stride)
    want = torch.tensor(_loop_best_match(a, b, patch, search, stride))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("patch,search,stride", CASES)
def test_map_matches_itself_everywhere(patch, search, stride):
    torch.manual_seed(1)
    a = torch.randn(3, 2, 6, 5)
    got = ncc_best_match(a, a, patch, search, stride)
    torch.testing.assert_close(got, torch.ones_like(got), atol=1e-5, rtol=0)


def test_constant_patch_scores_zero_with_finite_gradient():
    torch.manual_seed(2)
    a, b = torch.randn(1, 2, 6, 5), torch.randn(1, 2, 6, 5)
    a[:, :, 0:3, 0:3] = 0.7  # the first 3x3 tile of a is constant (over channels too)
    b[:, :, :, :] = 0.0  # b constant everywhere: every score is 0
    a.requires_grad_(True)
    b.requires_grad_(True)
    s_ab = ncc_best_match(a, torch.randn(1, 2, 6, 5), (3, 3), (5, None))
    assert s_ab[0, 0].item() == 0.0
    s_const = ncc_best_match(a, b, (3, 3), (5, None))
    assert torch.equal(s_const, torch.zeros_like(s_const))
    (s_ab.sum() + s_const.sum()).backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_gradient_matches_finite_differences():
    torch.manual_seed(3)
    a = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)

    def f(x, y):  # computed in float32 inside, so the tolerance below is loose
        return ncc_best_match(x, y, (2, 2), (3, None), 1)

    s = f(a, b).sum()
    s.backward()
    step = 1e-3
    for x, grad in ((a, a.grad), (b, b.grad)):
        for flat in (0, 7, 19, 33):
            with torch.no_grad():
                idx = torch.unravel_index(torch.tensor(flat), x.shape)
                x[idx] += step
                up = f(a, b).sum().item()
                x[idx] -= 2 * step
                down = f(a, b).sum().item()
                x[idx] += step
            assert grad[idx].item() == pytest.approx((up - down) / (2 * step), abs=2e-2)


def test_rejects_bad_maps():
    with pytest.raises(ValueError, match="same shape"):
        ncc_best_match(torch.randn(1, 2, 6, 5), torch.randn(1, 2, 6, 4))
    with pytest.raises(ValueError, match="larger than"):
        ncc_best_match(torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2), patch=(3, 3))
    with pytest.raises(ValueError, match=">= 1"):
        ncc_best_match(torch.randn(1, 2, 6, 5), torch.randn(1, 2, 6, 5), search=(0, None))
    with pytest.raises(ValueError, match="floating"):
        ncc_best_match(torch.zeros(1, 2, 6, 5, dtype=torch.long), torch.zeros(1, 2, 6, 5))


def _output(fmap):
    batch = fmap.shape[0]
    return ReIDOutput(torch.zeros(batch, 4), torch.zeros(batch, 4), None, (fmap,))


def test_loss_matches_loop_over_pairs():
    torch.manual_seed(4)
    fmap = torch.randn(6, 2, 6, 5)
    labels = torch.tensor([3, 3, 1, 2, 5, 0])  # one positive pair, two negative pairs
    loss = NCCLoss(patch=(2, 2), search=(3, None), stride=1, neg_margin=0.2)
    got = loss(_output(fmap), labels)
    scores = _loop_best_match(fmap[0::2], fmap[1::2], (2, 2), (3, None), 1)
    pair_losses = [
        sum((1 - s) if same else max(0.0, s - 0.2) for s in row) / len(row)
        for row, same in zip(scores, (True, False, False))
    ]
    assert got.item() == pytest.approx(sum(pair_losses) / 3, abs=1e-5)


def test_loss_signs_for_identical_pairs():
    torch.manual_seed(5)
    img = torch.randn(1, 2, 6, 5)
    fmap = torch.cat([img, img, img, img])  # two pairs of identical maps: best match 1
    loss = NCCLoss(patch=(3, 3), search=(5, None), neg_margin=0.5)
    assert loss(_output(fmap), torch.tensor([1, 1, 2, 2])).item() == pytest.approx(0, abs=1e-5)
    # as negatives, identical maps cost 1 - margin per patch
    assert loss(_output(fmap), torch.tensor([1, 2, 3, 4])).item() == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize("same,margin", [(True, 0.5), (False, -1.0)])
def test_gradient_step_moves_scores_the_right_way(same, margin):
    torch.manual_seed(6)
    fmap = torch.randn(2, 2, 6, 5, requires_grad=True)
    labels = torch.tensor([0, 0 if same else 1])
    loss = NCCLoss(patch=(3, 3), search=(3, None), neg_margin=margin)
    before = ncc_best_match(fmap[0:1], fmap[1:2], (3, 3), (3, None)).mean().item()
    loss(_output(fmap), labels).backward()
    with torch.no_grad():
        after = ncc_best_match(fmap[0:1] - 0.05 * fmap.grad[0:1], fmap[1:2] - 0.05 * fmap.grad[1:2],
                               (3, 3), (3, None)).mean().item()
    assert (after > before) if same else (after < before)


def test_loss_rejects_odd_batch_and_bad_labels():
    loss = NCCLoss()
    with pytest.raises(ValueError, match="B even"):
        loss(_output(torch.randn(3, 2, 6, 5)), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="labels"):
        loss(_output(torch.randn(2, 2, 6, 5)), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="neg_margin"):
        NCCLoss(neg_margin=1.0)


def test_build_loss_routes_model_output_to_ncc():
    torch.manual_seed(7)
    combined = build_loss({
        "ce": {"weight": 1.0, "label_smoothing": 0.0},
        "ncc": {"weight": 0.5, "patch": [3, 3], "search": [5, None], "neg_margin": 0.3},
    })
    assert isinstance(combined.losses["ncc"], NCCLoss)
    assert isinstance(combined.losses["ce"], CrossEntropyLoss)
    model = create_model("mspcnn", num_classes=3)
    output = model.forward_train(torch.randn(4, 3, 32, 16))
    labels = torch.tensor([0, 0, 1, 2])
    total, parts = combined(output, labels)
    expected = parts["ce"] + 0.5 * NCCLoss(neg_margin=0.3)(output, labels).item()
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total.backward()
    stem_grad = model.backbone.stem[0][0].weight.grad
    assert torch.isfinite(stem_grad).all() and stem_grad.abs().sum() > 0
