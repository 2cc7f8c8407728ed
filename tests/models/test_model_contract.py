"""One contract for every registered model (timm-style parametrised test)."""

import pytest
import torch

from reidkit.models import ReIDOutput, create_model, list_models

# Small inputs keep the suite fast; every backbone downsamples by at most 32.
H, W, B, K = 64, 32, 2, 5


@pytest.mark.parametrize("name", list_models())
def test_contract(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=K)
    x = torch.randn(B, 3, H, W)
    model.train()
    emb_train = model(x)
    out = model.forward_train(x)
    assert isinstance(out, ReIDOutput)
    assert emb_train.shape == (B, model.embedding_dim)
    assert out.embedding.shape == (B, model.embedding_dim)
    assert out.logits.shape == (B, K)
    assert out.feature.ndim == 2 and out.feature.shape[0] == B
    assert len(out.feature_maps) == len(model.backbone.out_channels)
    for fmap, channels in zip(out.feature_maps, model.backbone.out_channels):
        assert fmap.shape[:2] == (B, channels)
    model.eval()
    emb_eval = model(x)
    assert emb_eval.shape == (B, model.embedding_dim)  # same type and shape in eval mode
    assert torch.isfinite(emb_eval).all()


@pytest.mark.parametrize("name", list_models())
def test_no_classifier_gives_no_logits(name):
    model = create_model(name, num_classes=0).eval()
    out = model.forward_train(torch.randn(2, 3, H, W))
    assert out.logits is None
    assert model.num_classes == 0


def test_unknown_model_lists_names():
    with pytest.raises(KeyError, match="mobilenet_v2"):
        create_model("no_such_net")


def test_list_models_pattern():
    assert "resnet50" in list_models("resnet*")
    assert all(n.startswith("osnet") for n in list_models("osnet*"))
