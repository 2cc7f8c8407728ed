"""extract_features through the seam: backends agree, flip TTA, ONNX models, backend report."""

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from reidkit.evaluation import features as features_mod
from reidkit.evaluation.features import extract_features, last_backend
from reidkit.inference import OnnxModelError, OnnxReIDModel
from reidkit.models import create_model
from reidkit.onnx_export import export_onnx

H, W, N = 64, 32, 10


@pytest.fixture
def data():
    torch.manual_seed(1)
    images = torch.randn(N, 3, H, W)
    return images, DataLoader(TensorDataset(images, torch.arange(N), torch.arange(N) % 2), batch_size=4)


def _reference(model, images, flip=False):
    """Plain per-batch model calls (the mean of the two views' raw embeddings for flip)."""
    with torch.no_grad():
        emb = model(images)
        return (emb + model(images.flip(-1))) / 2 if flip else emb


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("flip", [False, True])
def test_backends_and_flip_match_plain_calls(tiny, data, backend, flip):
    images, loader = data
    out = extract_features(tiny, loader, backend=backend, flip=flip)
    assert out.features.dtype == torch.float32 and out.features.shape == (N, 12)
    assert np.abs(out.features.numpy() - _reference(tiny, images, flip).numpy()).max() < 1e-5
    assert out.pids.tolist() == list(range(N)) and out.camids.dtype == np.int64
    assert last_backend().startswith(backend)


def test_flip_changes_the_embedding(tiny, data):
    _, loader = data
    plain = extract_features(tiny, loader, backend="torch").features
    flipped = extract_features(tiny, loader, backend="torch", flip=True).features
    assert (plain - flipped).abs().max() > 1e-4


def test_onnx_model_runs_unchanged(tiny, data, tmp_path):
    images, loader = data
    export_onnx(tiny, tmp_path / "m.onnx", input_size=(H, W), num_check_images=2)
    onnx_model = OnnxReIDModel(tmp_path / "m.onnx")
    for flip in (False, True):
        out = extract_features(onnx_model, loader, flip=flip)
        assert np.abs(out.features.numpy() - _reference(tiny, images, flip).numpy()).max() < 1e-5
    assert last_backend().startswith("onnxruntime")
    with pytest.raises(OnnxModelError, match="local features"):
        extract_features(onnx_model, loader, with_local=True)


def test_auto_uses_torch_for_few_images_and_onnxruntime_otherwise(tiny, data, monkeypatch, caplog):
    _, loader = data
    extract_features(tiny, loader, amp=False)
    assert last_backend().startswith("torch")  # N < AUTO_MIN_IMAGES
    monkeypatch.setattr(features_mod, "AUTO_MIN_IMAGES", 1)
    with caplog.at_level(logging.INFO, logger="reidkit.inference"):
        extract_features(tiny, loader, amp=False)
    assert last_backend().startswith("onnxruntime (fp32, ")
    assert any(r.getMessage().startswith("extract: backend onnxruntime (fp32, ") for r in caplog.records)


def test_local_features_with_flip():
    torch.manual_seed(0)
    model = create_model("osnet_x0_25_aligned").eval()
    images = torch.randn(3, 3, H, W)
    loader = DataLoader(TensorDataset(images, torch.zeros(3), torch.zeros(3)), batch_size=2)
    out = extract_features(model, loader, with_local=True, flip=True)
    with torch.no_grad():
        a, b = model.forward_train(images), model.forward_train(images.flip(-1))
    assert torch.allclose(out.features, (a.embedding + b.embedding) / 2, atol=1e-5)
    assert torch.allclose(out.local, (a.local_feature + b.local_feature) / 2, atol=1e-5)


def test_empty_loader_is_a_clear_error(tiny):
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, H, W), torch.zeros(0), torch.zeros(0)), batch_size=2)
    with pytest.raises(ValueError, match="yielded no images"):
        extract_features(tiny, empty)
