"""MSP-CNN base net: stage shapes vs. Xiao et al.'s JSTL table, fc7 contract, weight loading."""

import pytest
import torch

from reidkit.models import create_model
from reidkit.models.mspcnn import InceptionA, InceptionB

# Xiao et al., CVPR 2016, Table 1 (JSTL net, 144 x 56 input): pool, inception 1b, 2b, 3b outputs
JSTL_STAGES = [(32, 72, 28), (384, 36, 14), (768, 18, 7), (1536, 9, 4)]


def test_stage_shapes_follow_the_jstl_table():
    model = create_model("mspcnn", num_classes=5).eval()
    with torch.no_grad():
        out = model.forward_train(torch.randn(1, 3, 144, 56))
    assert [tuple(f.shape[1:]) for f in out.feature_maps] == JSTL_STAGES
    assert model.backbone.out_channels == [c for c, _, _ in JSTL_STAGES]
    assert out.embedding.shape == (1, 256) and model.embedding_dim == 256


def test_inception_channels_and_stride():
    x = torch.randn(2, 256, 9, 7)
    assert InceptionA(256, 32)(x).shape == (2, 128, 9, 7)  # 4 branches of width 32
    assert InceptionB(256, 32)(x).shape == (2, 2 * 32 + 256, 5, 4)  # sizes rounded up


def test_fc7_is_feature_and_embedding_and_dropout_only_hits_logits():
    torch.manual_seed(0)
    model = create_model("mspcnn", num_classes=5).train()
    x = torch.randn(4, 3, 32, 16)  # train-mode BN uses batch statistics: deterministic
    first, second = model.forward_train(x), model.forward_train(x)
    assert torch.equal(first.feature, first.embedding)
    assert torch.equal(first.embedding, second.embedding)
    assert not torch.equal(first.logits, second.logits)
    assert (first.embedding >= 0).all()  # fc7 is taken after its ReLU


def test_pretrained_path_round_trip(tmp_path):
    torch.manual_seed(1)
    trained = create_model("mspcnn", num_classes=5).eval()
    path = tmp_path / "mspcnn.pth"
    torch.save(trained.state_dict(), path)
    loaded = create_model("mspcnn", num_classes=5, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 32, 16)
    with torch.no_grad():
        assert torch.equal(trained.backbone(x)[-1], loaded.backbone(x)[-1])
    with pytest.raises(ValueError, match="from scratch"):
        create_model("mspcnn", pretrained=True)
