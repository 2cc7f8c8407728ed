"""OSNet (Zhou et al., ICCV 2019): sizes against the paper, the block's structure against a
hand-written reference, receptive fields measured by gradients, and local weight loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidkit.models import _MODELS, WeightsError, WeightsFile
from reidkit.models.osnet import (
    ChannelGate,
    LiteConv3x3,
    OSBlock,
    OSNetBackbone,
    osnet_x0_5,
    osnet_x0_25,
    osnet_x0_75,
    osnet_x1_0,
)

FACTORIES = {1.0: osnet_x1_0, 0.75: osnet_x0_75, 0.5: osnet_x0_5, 0.25: osnet_x0_25}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of every Conv2d and Linear for one image, counted with forward hooks."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total += out[0].numel() * k  # out[0]: (C_out, H, W) of the first image
        else:
            total += m.in_features * m.out_features

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return total


# --- reference parameter count, written from the paper's text and Table 1 -----------------------


def ref_block_params(c_in: int, c_out: int) -> int:
    """OSBlock: 1x1 reduce (+BN), streams of 1..4 Lite 3x3 (1x1 + 3x3 dw + BN), gate MLP with
    biases, 1x1 expand (+BN), 1x1 projection (+BN) when c_in != c_out."""
    m = c_out // 4
    hidden = max(m // 16, 1)
    reduce = c_in * m + 2 * m
    streams = (1 + 2 + 3 + 4) * (m * m + 9 * m + 2 * m)
    gate = m * hidden + hidden + hidden * m + m
    expand = m * c_out + 2 * c_out
    proj = c_in * c_out + 2 * c_out if c_in != c_out else 0
    return reduce + streams + gate + expand + proj


def ref_osnet_params(width: float, dim: int = 512) -> int:
    """Backbone + FC(dim) + BN1d(dim) of Table 1, without the classifier."""
    c1, c2, c3, c4 = (round(c * width) for c in (64, 256, 384, 512))
    conv1 = 3 * 49 * c1 + 2 * c1
    stages = sum(
        ref_block_params(a, b) + ref_block_params(b, b) for a, b in ((c1, c2), (c2, c3), (c3, c4))
    )
    transitions = sum(c * c + 2 * c for c in (c2, c3))
    conv5 = c4 * c4 + 2 * c4
    head = c4 * dim + dim + 2 * dim
    return conv1 + stages + transitions + conv5 + head


@pytest.mark.parametrize("width", [1.0, 0.75, 0.5, 0.25])
def test_parameter_count_matches_reference_formula(width):
    assert n_params(FACTORIES[width]()) == ref_osnet_params(width)


@pytest.mark.parametrize("width, paper", [(1.0, 2.2e6), (0.25, 0.2e6)])
def test_parameter_count_matches_paper(width, paper):
    # The paper's sizes (METHODS.md section 2) count the backbone and the FC-512 head without the
    # classifier. Measured: 2,169,508 (1.4% below 2.2 M) and 201,864 (0.9% above 0.2 M); 5% allowed.
    model = FACTORIES[width](num_classes=0)
    assert model.num_classes == 0
    assert n_params(model) == pytest.approx(paper, rel=0.05)


def test_multiply_adds_match_paper():
    # Paper: 0.98 G (x1.0) and 0.08 G (x0.25) mult-adds at 256 x 128; we count conv and linear
    # multiply-adds and get 978.9 M and 82.3 M. 10% allowed.
    x = torch.randn(1, 3, 256, 128)
    assert count_macs(osnet_x1_0(), x) == pytest.approx(0.98e9, rel=0.10)
    assert count_macs(osnet_x0_25(), x) == pytest.approx(0.08e9, rel=0.10)


# --- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_stage_shapes_embedding_and_logits(width):
    model = FACTORIES[width](num_classes=7)
    out = model.forward_train(torch.randn(2, 3, 256, 128))
    c = [round(k * width) for k in (256, 384, 512, 512)]
    sizes = [(64, 32), (32, 16), (16, 8), (16, 8)]  # Table 1: strides 4, 8, 16, 16
    assert [tuple(f.shape) for f in out.feature_maps] == [(2, ci, *hw) for ci, hw in zip(c, sizes)]
    assert model.backbone.out_channels == c
    assert out.embedding.shape == (2, 512)
    assert out.logits.shape == (2, 7)
    assert model.eval()(torch.randn(3, 3, 256, 128)).shape == (3, 512)


def test_other_heads_and_registry():
    x = torch.randn(2, 3, 64, 32)
    assert osnet_x0_25(num_classes=5, head="bnneck").eval()(x).shape == (2, 128)
    assert osnet_x0_25(embedding_dim=64).eval()(x).shape == (2, 64)
    with pytest.raises(ValueError):
        osnet_x0_25(head="nope")
    for fn in FACTORIES.values():
        assert _MODELS[fn.__name__] is fn


def test_initialisation():
    torch.manual_seed(0)
    model = osnet_x1_0()
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    fc = model.head.embed[0]
    assert isinstance(fc, nn.Linear)
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(fc.bias == 0)
    conv = model.backbone.conv2[0].reduce[0]  # kaiming fan-out: std = sqrt(2 / (C_out * k * k))
    assert conv.weight.std().item() == pytest.approx((2 / conv.out_channels) ** 0.5, rel=0.1)


# --- the omni-scale block ------------------------------------------------------------------------


def ref_gate(gate: ChannelGate, x: torch.Tensor) -> torch.Tensor:
    """The paper's gate from raw weights: sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2), (B, C)."""
    s = x.mean(dim=(2, 3))  # (B, C)
    w1, w2 = gate.fc1.weight.flatten(1), gate.fc2.weight.flatten(1)  # (h, C), (C, h)
    return torch.sigmoid(torch.relu(s @ w1.T + gate.fc1.bias) @ w2.T + gate.fc2.bias)


def test_lite_conv_is_pointwise_then_depthwise():
    torch.manual_seed(0)
    lite = LiteConv3x3(5, 6).eval()
    x = torch.randn(2, 5, 9, 7)
    ref = F.conv2d(x, lite.pointwise.weight)  # linear 1x1, no BN/ReLU in between
    ref = F.conv2d(ref, lite.depthwise.weight, padding=1, groups=6)
    assert lite.depthwise.weight.shape == (6, 1, 3, 3)
    torch.testing.assert_close(lite(x), torch.relu(lite.bn(ref)))


def test_gate_is_shared_across_streams_and_input_dependent():
    torch.manual_seed(0)
    block = OSBlock(128, 256).eval()
    assert sum(isinstance(m, ChannelGate) for m in block.modules()) == 1
    assert block.gate.fc1.out_channels == 64 // 16  # C_out/4 = 64 stream channels, reduction 16
    with torch.no_grad():  # keep the hidden ReLUs active so the test does not hinge on the init
        block.gate.fc1.bias.fill_(1.0)

    calls = []
    block.gate.register_forward_hook(lambda m, i, o: calls.append((m, i[0], o)))
    stream_outs = []
    for s in block.streams:
        s.register_forward_hook(lambda m, i, o: stream_outs.append(o))
    x1, x2 = torch.randn(2, 128, 12, 10), torch.randn(2, 128, 12, 10) * 3 + 1
    with torch.no_grad():
        y = block(x1)
    assert len(calls) == 4 and all(m is block.gate for m, _, _ in calls)
    for (_, gate_in, w), s in zip(calls, stream_outs):  # gate t sees stream t's own output
        assert gate_in is s and w.shape == (2, 64, 1, 1)
        torch.testing.assert_close(w.flatten(1), ref_gate(block.gate, s))

    # The block output equals a hand assembly: sum_t G(x^t) x^t, expand, projection shortcut, ReLU.
    fused = sum(ref_gate(block.gate, s)[:, :, None, None] * s for s in stream_outs)
    ref = torch.relu(block.expand(fused) + block.shortcut(x1))
    torch.testing.assert_close(y, ref)

    with torch.no_grad():
        block(x2)
    w_a, w_b = calls[0][2], calls[4][2]  # stream 1's weights for the two inputs
    assert (w_a - w_b).abs().max() > 1e-3
    assert (w_a[0] - w_a[1]).abs().max() > 1e-4  # and per image within a batch


@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_stream_receptive_field(t):
    torch.manual_seed(t)
    block = OSBlock(64, 64).eval()  # eval: BN must not mix pixels through batch statistics
    stream = block.streams[t - 1]
    depthwise = [m for m in stream.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == t and all(m.kernel_size == (3, 3) for m in depthwise)

    x = torch.randn(1, 64, 21, 21, requires_grad=True)
    stream(block.reduce(x))[0, :, 10, 10].sum().backward()
    rows, cols = torch.nonzero(x.grad[0].abs().sum(0)).unbind(1)
    assert (rows.min().item(), rows.max().item()) == (10 - t, 10 + t)  # 2t + 1 = 3, 5, 7, 9
    assert (cols.min().item(), cols.max().item()) == (10 - t, 10 + t)


def test_width_multiplier_scales_every_channel():
    b = OSNetBackbone(width=0.5)
    assert b.stem[0][0].out_channels == 32
    assert b.out_channels == [128, 192, 256, 256]
    assert b.conv5[0].out_channels == 256


# --- pretrained weights --------------------------------------------------------------------------


def _with_bn_statistics(model: nn.Module) -> nn.Module:
    with torch.no_grad():  # non-default BN statistics, so they must be loaded too
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("prefix", ["", "backbone.", "module.", "module.backbone."])
def test_load_local_state_dict_reproduces_outputs(tmp_path, prefix):
    torch.manual_seed(0)
    src = _with_bn_statistics(osnet_x0_25())
    state = {prefix + k: v for k, v in src.backbone.state_dict().items()}
    state["classifier.weight"] = torch.zeros(3, 8)  # a classifier of another size is skipped
    path = tmp_path / "osnet.pth"
    torch.save(state, path)

    dst = osnet_x0_25(pretrained=str(path))
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        a, b = src.eval().forward_train(x), dst.eval().forward_train(x)
    for fa, fb in zip(a.feature_maps, b.feature_maps):
        torch.testing.assert_close(fa, fb, rtol=0, atol=0)


def test_whole_model_file_reproduces_the_embedding(tmp_path):
    torch.manual_seed(0)
    src = _with_bn_statistics(osnet_x0_25(num_classes=9))
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, tmp_path / "m.pth")
    dst = osnet_x0_25(pretrained=tmp_path / "m.pth")  # head loaded too; classifier skipped
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x), rtol=0, atol=0)


def test_missing_keys_raise_and_non_strict_warns(tmp_path):
    state = OSNetBackbone(width=0.25).state_dict()
    del state["conv5.0.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="partial.pth.*missing.*backbone.conv5.0.weight"):
        osnet_x0_25(pretrained=path)
    with pytest.warns(UserWarning, match="conv5.0.weight"):
        osnet_x0_25(pretrained=WeightsFile(path, strict=False))


def test_load_rejects_unrelated_file_and_pretrained_true(tmp_path):
    path = tmp_path / "unrelated.pth"
    torch.save({"foo.weight": torch.zeros(2), "conv5.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="unrelated.pth"):
        osnet_x0_25(pretrained=path)
    with pytest.raises(ValueError, match="local state dict"):
        osnet_x0_25(pretrained=True)
