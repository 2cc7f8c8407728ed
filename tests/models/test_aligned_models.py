"""AlignedReID models: the local branch's shapes and values vs. a reference computed by hand."""

from __future__ import annotations

import pytest
import torch

from reidkit.models import create_model, list_models
from reidkit.models.aligned import AlignedReIDModel, LocalBranch

H, W, B, K = 64, 32, 2, 5
ALIGNED = list_models("*_aligned")


def test_expected_variants_are_registered():
    wanted = {"mobilenet_v2", "resnet50", "osnet_x1_0", "osnet_x0_25"}
    assert {f"{name}_aligned" for name in wanted} <= set(ALIGNED)


@pytest.mark.parametrize("name", ALIGNED)
def test_aligned_contract(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=K).eval()
    assert isinstance(model, AlignedReIDModel)
    x = torch.randn(B, 3, H, W)
    out = model.forward_train(x)
    rows = out.feature_maps[-1].shape[2]
    assert out.local_feature.shape == (B, rows, 128)  # one stripe per row of the last map
    assert out.logits.shape == (B, K)
    torch.testing.assert_close(model(x), out.embedding)  # model(x) is the global embedding
    assert model(x).shape == (B, model.embedding_dim)


def _reference_branch(branch: LocalBranch, fmap: torch.Tensor, groups: list[range]):
    """Eval-mode local branch by hand: max over each row group and the width, then conv/BN/ReLU."""
    stripes = torch.stack([fmap[:, :, list(rows), :].flatten(2).max(2).values for rows in groups], 1)
    z = stripes @ branch.conv.weight[:, :, 0, 0].T  # (B, S, C_l)
    bn = branch.bn
    z = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return z.clamp_min(0)


@pytest.mark.parametrize("num_stripes", [None, 4, 8])
def test_local_branch_matches_hand_computation(num_stripes):
    torch.manual_seed(1)
    branch = LocalBranch(6, local_dim=5, num_stripes=num_stripes)
    with torch.no_grad():  # non-trivial BN statistics
        branch.bn.running_mean.uniform_(-0.5, 0.5)
        branch.bn.running_var.uniform_(0.5, 2.0)
        branch.bn.weight.uniform_(0.5, 1.5)
        branch.bn.bias.uniform_(-0.2, 0.2)
    branch.eval()
    fmap = torch.randn(3, 6, 8, 3)  # (B, C, H, W)
    s = num_stripes or 8
    groups = [range(i * 8 // s, (i + 1) * 8 // s) for i in range(s)]
    torch.testing.assert_close(branch(fmap), _reference_branch(branch, fmap, groups))


def test_local_branch_trains_and_rejects_bad_arguments():
    out = LocalBranch(4).train()(torch.randn(2, 4, 3, 2))
    assert out.shape == (2, 3, 128)
    out.sum().backward()
    with pytest.raises(ValueError, match="num_stripes"):
        LocalBranch(4, num_stripes=0)
    with pytest.raises(ValueError, match="local_dim"):
        LocalBranch(4, local_dim=2.5)


def test_num_stripes_and_local_dim_pass_through():
    model = create_model("osnet_x0_25_aligned", local_dim=16, num_stripes=2).eval()
    assert model.forward_train(torch.randn(1, 3, H, W)).local_feature.shape == (1, 2, 16)


def test_pretrained_backbone_file_loads(tmp_path):
    torch.manual_seed(2)
    plain = create_model("mobilenet_v2")
    path = tmp_path / "backbone.pth"
    torch.save(plain.backbone.state_dict(), path)
    aligned = create_model("mobilenet_v2_aligned", pretrained=str(path))
    torch.testing.assert_close(aligned.backbone.state_dict(), plain.backbone.state_dict())
