"""OSNet-IBN and OSNet-AIN (Zhou et al., TPAMI 2021): IN placement, the IN blocks against hand
references, sizes against torchreid's modules and the model zoo, and what IN is for."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidkit.models import _MODELS, create_model
from reidkit.models.osnet import OSBlock, OSNetBackbone
from reidkit.models.osnet_ain import AIN_BLOCKS, IBN_BLOCKS

REFERENCE = json.loads((Path(__file__).parent / "data" / "torchreid_keys.json").read_text())
AIN = ["osnet_ain_x1_0", "osnet_ain_x0_75", "osnet_ain_x0_5", "osnet_ain_x0_25"]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchreid_params(arch: str) -> int:
    """Parameters of torchreid's ``arch`` without its classifier, from the published key list."""
    keys = REFERENCE["keys"][REFERENCE["key_sets"][arch]]
    shapes = REFERENCE["shapes"][arch].split(" ")
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(
        math.prod(int(d) for d in s.split("x"))
        for k, s in zip(keys, shapes)
        if not k.endswith(buffers) and not k.startswith("classifier.")
    )


def blocks(model) -> list[list[OSBlock]]:
    b = model.backbone
    return [[m for m in stage if isinstance(m, OSBlock)] for stage in (b.conv2, b.conv3, b.conv4)]


# --- placement -----------------------------------------------------------------------------------


def test_ain_placement():
    model = create_model("osnet_ain_x1_0")
    assert isinstance(model.backbone.stem[0][1], nn.InstanceNorm2d)
    for stage, places in zip(blocks(model), AIN_BLOCKS):
        for block, place in zip(stage, places):
            expect = nn.InstanceNorm2d if place == "residual" else nn.BatchNorm2d
            assert type(block.expand[1]) is expect
            assert isinstance(block.out_norm, nn.Identity)
    assert AIN_BLOCKS == (("residual", "residual"), (None, "residual"), ("residual", None))
    ins = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(ins) == 1 + 4 and all(m.affine and not m.track_running_stats for m in ins)


def test_ibn_placement():
    model = create_model("osnet_ibn_x1_0")
    assert isinstance(model.backbone.stem[0][1], nn.InstanceNorm2d)
    for stage, places in zip(blocks(model), IBN_BLOCKS):
        for block, place in zip(stage, places):
            assert isinstance(block.expand[1], nn.BatchNorm2d)
            assert isinstance(block.out_norm, nn.InstanceNorm2d if place == "output" else nn.Identity)
    assert IBN_BLOCKS[0] == ("output", "output") and set(IBN_BLOCKS[1] + IBN_BLOCKS[2]) == {None}


def test_registered():
    for name in ["osnet_ibn_x1_0", *AIN]:
        assert name in _MODELS


# --- the IN blocks against hand references -----------------------------------------------------


def _fused(block: OSBlock, x: torch.Tensor) -> torch.Tensor:
    h = block.reduce(x)
    return sum(block.gate(s(h)) * s(h) for s in block.streams)


def _in(x: torch.Tensor, norm: nn.InstanceNorm2d) -> torch.Tensor:
    """Instance normalisation written out: per image and channel over H x W, then affine."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    w, b = norm.weight[None, :, None, None], norm.bias[None, :, None, None]
    return (x - mean) / torch.sqrt(var + norm.eps) * w + b


def _perturb(block: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return block.eval()


def test_residual_in_block_matches_hand_reference():
    torch.manual_seed(0)
    block = _perturb(OSBlock(32, 64, instance_norm="residual"))
    x = torch.randn(2, 32, 10, 6)
    with torch.no_grad():
        expanded = F.conv2d(_fused(block, x), block.expand[0].weight)  # linear 1x1, then IN
        ref = torch.relu(block.shortcut(x) + _in(expanded, block.expand[1]))
        torch.testing.assert_close(block(x), ref)


def test_output_in_block_matches_hand_reference():
    torch.manual_seed(1)
    block = _perturb(OSBlock(64, 64, instance_norm="output"))
    x = torch.randn(2, 64, 10, 6)
    with torch.no_grad():
        ref = torch.relu(_in(block.expand(_fused(block, x)) + x, block.out_norm))  # identity shortcut
        torch.testing.assert_close(block(x), ref)


def test_stem_instance_norm_removes_image_contrast():
    # conv1 is linear without bias, so IN after it cancels a per-image contrast factor; the BN
    # stem of plain OSNet (eval mode, fixed statistics) does not.
    torch.manual_seed(2)
    x = torch.randn(2, 3, 64, 32)  # (IN's eps makes the invariance approximate at low variance)
    ain = create_model("osnet_ain_x0_25").eval()
    plain = create_model("osnet_x0_25").eval()
    with torch.no_grad():
        torch.testing.assert_close(ain.backbone.stem(3 * x), ain.backbone.stem(x), atol=1e-3, rtol=1e-3)
        assert (plain.backbone.stem(3 * x) - plain.backbone.stem(x)).abs().max() > 0.1


def test_bad_instance_norm_arguments():
    with pytest.raises(ValueError, match="instance_norm"):
        OSBlock(16, 16, instance_norm="before")
    with pytest.raises(ValueError, match=r"one entry per OSBlock, \[2, 2, 2\]"):
        OSNetBackbone(width=0.25, instance_norm=[[None], [None, None], [None, None]])
    with pytest.raises(ValueError, match="norm must be"):
        OSNetBackbone(width=0.25, stem_norm="ln")


# --- sizes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["osnet_ibn_x1_0", *AIN])
def test_parameter_count_equals_torchreids(arch):
    # torchreid's published modules (the JSON list), classifier excluded; FC-512 head included.
    assert n_params(create_model(arch)) == torchreid_params(arch)


def test_parameter_counts_against_osnet_and_the_zoo():
    plain = {a: n_params(create_model(a.replace("_ain", ""))) for a in AIN}
    for arch in AIN:  # an affine IN has as many parameters as the BN it replaces
        assert n_params(create_model(arch)) == plain[arch]
    ibn = n_params(create_model("osnet_ibn_x1_0"))
    assert ibn == plain["osnet_ain_x1_0"] + 2 * (2 * 256)  # two output INs of 256 channels
    for n in (ibn, plain["osnet_ain_x1_0"]):  # torchreid's model zoo lists 2.2 M for both
        assert n == pytest.approx(2.2e6, rel=0.05)


def test_multiply_adds_equal_osnets():
    # IN adds no convolution or linear layer: the paper's / zoo's 0.98 G holds for the variants.
    def conv_linear_macs(model):
        total = 0

        def hook(m, inputs, out):
            nonlocal total
            if isinstance(m, nn.Conv2d):
                total += out[0].numel() * m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            else:
                total += m.in_features * m.out_features

        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        hooks = [m.register_forward_hook(hook) for m in layers]
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, 256, 128))
        for h in hooks:
            h.remove()
        return total

    ain = conv_linear_macs(create_model("osnet_ain_x1_0"))
    assert ain == conv_linear_macs(create_model("osnet_x1_0"))
    assert ain == pytest.approx(0.98e9, rel=0.10)
