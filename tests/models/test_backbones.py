"""ResNet-50 / MobileNetV2 specifics: strides, heads, local pretrained weights."""

from pathlib import Path

import pytest
import torch
import torchvision

from reidkit.models import BNNeckHead, EmbeddingHead, create_model

WEIGHTS = Path(__file__).resolve().parents[2].parent / "shared" / "weights" / "mobilenet_v2_imagenet_features.pth"


@pytest.mark.parametrize("last_stride, final", [(2, (8, 4)), (1, (16, 8))])
def test_resnet50_last_stride(last_stride, final):
    model = create_model("resnet50", last_stride=last_stride).eval()
    maps = model.forward_train(torch.randn(1, 3, 256, 128)).feature_maps
    assert [m.shape[-2:] for m in maps] == [(64, 32), (32, 16), (16, 8), final]


def test_resnet50_heads():
    bnneck = create_model("resnet50", num_classes=7)
    assert isinstance(bnneck.head, BNNeckHead) and bnneck.embedding_dim == 2048
    amsfl = create_model("resnet50", num_classes=7, head="bn_fc_relu", embedding_dim=512)
    assert isinstance(amsfl.head, EmbeddingHead) and amsfl.embedding_dim == 512
    layers = [type(m) for m in amsfl.head.embed]
    assert layers == [torch.nn.BatchNorm1d, torch.nn.Linear, torch.nn.ReLU]


def test_bnneck_feature_is_pre_bn():
    model = create_model("mobilenet_v2", num_classes=3).eval()
    out = model.forward_train(torch.randn(2, 3, 64, 32))
    pooled = out.feature_maps[-1].mean(dim=(2, 3))
    torch.testing.assert_close(out.feature, pooled)
    torch.testing.assert_close(out.embedding, model.head.bn(pooled))
    torch.testing.assert_close(out.logits, out.embedding @ model.head.classifier.weight.T)


def test_mobilenet_matches_torchvision_features():
    """Our stage split must compute exactly torchvision's ``features`` stack."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2").eval()
    ref = torchvision.models.mobilenet_v2(weights=None).eval()
    ref.features.load_state_dict(model.backbone.features.state_dict())
    x = torch.randn(2, 3, 128, 64)
    torch.testing.assert_close(model.forward_train(x).feature_maps[-1], ref.features(x))


def test_local_state_dict_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = create_model("mobilenet_v2")
    path = tmp_path / "w.pth"
    torch.save({f"module.{k}": v for k, v in src.backbone.state_dict().items()}, path)
    dst = create_model("mobilenet_v2", pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 32)
    torch.testing.assert_close(dst.backbone(x)[-1], src.eval().backbone(x)[-1])


def test_local_file_without_matching_keys(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="bad.pth"):
        create_model("mobilenet_v2", pretrained=str(path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        create_model("mobilenet_v2", pretrained=str(tmp_path / "missing.pth"))


@pytest.mark.skipif(not WEIGHTS.exists(), reason="../shared/weights not present")
def test_shared_imagenet_mobilenet_loads_completely():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing-keys warning would fail here
        model = create_model("mobilenet_v2", pretrained=str(WEIGHTS))
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.backbone.features[0][0].weight, state["features.0.0.weight"])
