"""PAUL's PatchNet: contract, STN sampling against direct slicing, initial layout, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from reidkit.models.paul import (
    PALETTE,
    PatchGenerator,
    PatchNet,
    draw_patches,
    paul_mobilenet_v2,
    patch_corners,
    sample_patches,
    stripe_thetas,
)

WEIGHTS = Path(__file__).resolve().parents[2].parent / "shared" / "weights" / "mobilenet_v2_imagenet_features.pth"
B, H, W, K = 3, 64, 32, 5  # MobileNetV2 with last stride 1: a 4 x 2 map


def _small(**kwargs) -> PatchNet:
    torch.manual_seed(0)
    return paul_mobilenet_v2(loc_channels=16, loc_hidden=8, **kwargs)


def test_contract_shapes_and_normalised_descriptor():
    model = _small(num_classes=K).train()
    x = torch.randn(B, 3, H, W)
    out = model.forward_train(x)
    assert model.embedding_dim == 6 * 256 and model.num_classes == K
    assert out.embedding.shape == (B, 6 * 256) and out.local_feature.shape == (B, 6, 256)
    torch.testing.assert_close(out.local_feature.norm(dim=2), torch.ones(B, 6))  # unit patches
    torch.testing.assert_close(out.embedding, out.local_feature.flatten(1))  # concatenation
    assert out.feature is out.embedding
    patches = model.forward_patches(x)
    assert patches.patch_logits.shape == (B, 6, K) and patches.theta.shape == (B, 6, 2, 3)
    torch.testing.assert_close(out.logits, patches.patch_logits.mean(1))
    model.eval()
    torch.testing.assert_close(model(x), model.forward_train(x).embedding)
    assert _small().forward_train(x).logits is None


def test_stripe_thetas_are_the_authors_layout():
    ty = torch.tensor([-5, -3, -1, 1, 3, 5]) / 6
    expected = torch.stack([torch.tensor([[1.0, 0.0, 0.0], [0.0, 1 / 6, float(t)]]) for t in ty])
    torch.testing.assert_close(stripe_thetas(6), expected)
    with pytest.raises(ValueError, match="num_patches"):
        stripe_thetas(0)


def test_identity_transform_returns_the_map():
    fmap = torch.randn(2, 5, 6, 4)
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    torch.testing.assert_close(sample_patches(fmap, identity), fmap)


@pytest.mark.parametrize("rows,cols", [((2, 5), (1, 3)), ((0, 8), (0, 2)), ((6, 8), (3, 4))])
def test_known_crop_equals_direct_slicing(rows, cols):
    fmap = torch.randn(2, 3, 8, 4)  # (B, C, H, W)
    (r0, r1), (c0, c1) = rows, cols
    hh, ww = r1 - r0, c1 - c0
    # The crop [r0, r1) x [c0, c1) in edge coordinates: scale = size / full, shift = its centre.
    theta = torch.tensor([[ww / 4, 0, -1 + (c0 + c1) / 4], [0, hh / 8, -1 + (r0 + r1) / 8]]).expand(2, 2, 3)
    torch.testing.assert_close(sample_patches(fmap, theta, (hh, ww)), fmap[:, :, r0:r1, c0:c1])


def test_initial_patches_are_distinct_stripes_and_match_a_hand_computation():
    model = _small(num_patches=4, patch_size=(1, 2)).eval()  # 4 stripes of the 4 x 2 map
    x = torch.randn(B, 3, H, W)
    with torch.no_grad():
        fmap = model.backbone(x)[-1]  # (B, 1280, 4, 2)
        theta = model.patch_thetas(x)
        out = model.forward_patches(x)
    torch.testing.assert_close(theta, stripe_thetas(4).expand(B, 4, 2, 3))  # zero weight, bias only
    assert len({tuple(t.flatten().tolist()) for t in theta[0]}) == 4
    for m, branch in enumerate(model.head.branches):
        pooled = fmap[:, :, m, :].mean(dim=2)  # (B, C): row m averaged over the width
        conv, bn = branch[0], branch[1]
        z = pooled @ conv.weight[:, :, 0, 0].T + conv.bias
        z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(out.patch_features[:, m], F.normalize(z, dim=1), atol=1e-5, rtol=1e-4)
    assert (out.patch_features[:, 0] - out.patch_features[:, 1]).abs().max() > 1e-3


def test_patch_corners_of_the_stripes():
    corners = patch_corners(stripe_thetas(4)[None], height=64, width=32)  # (1, 4, 4, 2)
    for m in range(4):
        top, bottom = 16.0 * m, 16.0 * (m + 1)
        expected = torch.tensor([[0.0, top], [32.0, top], [32.0, bottom], [0.0, bottom]])
        torch.testing.assert_close(corners[0, m], expected)


def test_gradient_reaches_trunk_head_and_patch_transforms():
    model = _small(num_classes=K).train()
    out = model.forward_patches(torch.randn(B, 3, H, W))
    (out.patch_logits.logsumexp(2).sum() + out.embedding.pow(3).sum()).backward()
    for part in ("backbone", "head"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameter_groups()[part])
    assert model.patch_generator.fc[2].bias.grad.abs().sum() > 0  # through grid_sample to theta


def test_freeze_patch_generator():
    model = _small(num_classes=K).freeze_patch_generator().train()
    gen = model.patch_generator
    assert not any(p.requires_grad for p in gen.parameters())
    assert not gen.training and model.backbone.training and model.head.training
    bn = gen.localization[1]
    before = bn.running_mean.clone()
    out = model.forward_patches(torch.randn(B, 3, H, W))
    out.embedding.sum().backward()
    torch.testing.assert_close(bn.running_mean, before)  # eval-mode BN: statistics untouched
    assert all(p.grad is None for p in gen.parameters())
    assert any(p.grad is not None for p in model.backbone.parameters())
    model.freeze_patch_generator(False)
    assert gen.training and all(p.requires_grad for p in gen.parameters())


def test_state_dict_round_trip():
    model = _small(num_classes=K).eval()
    other = _small(num_classes=K)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    other.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, H, W)
    torch.testing.assert_close(other.eval()(x), model(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="init_theta"):
        PatchGenerator(8, num_patches=3, init_theta=torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="loc_channels"):
        PatchGenerator(8, loc_channels=0)
    with pytest.raises(ValueError, match="corners"):
        draw_patches([], torch.zeros(0, 6, 4, 2), (64, 32))


def test_draw_patches_outlines_every_patch():
    from PIL import Image

    images = [Image.new("RGB", (32, 64), (128, 128, 128)) for _ in range(2)]
    corners = patch_corners(stripe_thetas(3).expand(2, 3, 2, 3), height=64, width=32)
    picture = draw_patches(images, corners, input_size=(64, 32), cell=(64, 32))
    assert picture.size == (2 * (32 + 4) + 4, 64 + 8)
    colours = {colour for _, colour in picture.getcolors(maxcolors=1 << 16)}
    assert {PALETTE[0], PALETTE[1], PALETTE[2]} <= colours


@pytest.mark.skipif(not WEIGHTS.exists(), reason="../shared/weights not present")
def test_pretrained_trunk_loads_from_the_shared_file():
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    model = paul_mobilenet_v2(pretrained=str(WEIGHTS), loc_channels=16, loc_hidden=8)
    key = next(k for k in state if k.endswith("weight"))
    torch.testing.assert_close(model.backbone.state_dict()[key], state[key])


def test_target_stage_step_trains_all_but_the_frozen_generator():
    from reidkit.losses.ipfl import ipfl_loss
    from reidkit.losses.pedal import PatchMemoryBank

    model = _small(num_classes=K).freeze_patch_generator().train()
    images = torch.randn(10, 3, H, W)
    bank = PatchMemoryBank(10, 6, 256, k=3)
    with torch.no_grad():  # the initial pass over the "training set"
        bank.fill(model.forward_train(images).local_feature, torch.arange(10))
    frozen = {k: v.clone() for k, v in model.patch_generator.state_dict().items()}
    trunk = model.backbone.features[0][0].weight.clone()
    memory = bank.memory.clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    idx = torch.tensor([1, 4, 7, 9])
    views = images[idx] + 0.1 * torch.randn(4, 3, H, W)  # stand-in for the augmented copies
    out = model.forward_train(torch.cat([images[idx], views]))  # B images + B copies
    anchor, positive = out.embedding.split(4)
    loss = bank.loss(out.local_feature[:4], idx) + 2.0 * ipfl_loss(anchor, positive)
    opt.zero_grad()
    loss.backward()
    opt.step()
    bank.update(out.local_feature[:4], idx)
    for key, value in model.patch_generator.state_dict().items():
        assert torch.equal(value, frozen[key]), key  # weights and BN statistics
    assert not torch.equal(model.backbone.features[0][0].weight, trunk)
    changed = (bank.memory != memory).any(dim=2).any(dim=0)  # (N,)
    assert changed.tolist() == [i in idx.tolist() for i in range(10)]
