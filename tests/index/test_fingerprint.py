"""model_fingerprint and IndexManifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from reidkit.index import GalleryIndexError, IndexManifest, model_fingerprint


def _small_cnn() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))


def test_fingerprint_follows_the_weights_not_the_object():
    torch.manual_seed(0)
    a, b = _small_cnn(), _small_cnn()
    assert model_fingerprint(a) != model_fingerprint(b)  # different random weights
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    b.to(memory_format=torch.channels_last)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        first = next(b.parameters())
        first[(0,) * first.dim()] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)


def test_fingerprint_equals_a_plain_hash_of_the_state_dict():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():  # includes BN buffers
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.reshape(-1).shape)}|".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    assert model_fingerprint(model) == digest.hexdigest()


def test_fingerprint_of_a_file_is_its_sha256(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx bytes" * 1000)
    assert model_fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model_fingerprint(str(path)) == model_fingerprint(path)
    with pytest.raises(GalleryIndexError, match="does not exist"):
        model_fingerprint(tmp_path / "missing.onnx")
    with pytest.raises(TypeError, match="torch.nn.Module or a file path"):
        model_fingerprint(3)


def test_manifest_for_model_and_validation():
    model = torch.nn.Linear(2, 2)
    manifest = IndexManifest.for_model(model, "linear", [64, 32], flip=True)
    assert manifest.input_size == (64, 32) and manifest.flip and manifest.normalized
    assert manifest.describe() == f"linear ({model_fingerprint(model)[:12]})"
    with_source = IndexManifest.for_model(model, "linear", (64, 32), model_source={"checkpoint": "/runs/a/last.pt"})
    assert with_source.model_source == {"checkpoint": "/runs/a/last.pt"}
    with_source.check_compatible(IndexManifest.for_model(model, "linear", (64, 32)), Path("idx"))  # sources may differ
    for kwargs, message in [
        (dict(model_source={"checkpoint": 3}), "model_source must be a dict of strings"),
        (dict(model_sha256="abc"), "64 lowercase hex"),
        (dict(input_size=(0, 3)), "input_size"),
        (dict(model_name=""), "model_name"),
        (dict(flip="yes"), "flip must be a bool"),
    ]:
        with pytest.raises(GalleryIndexError, match=message):
            IndexManifest(**{"model_name": "m", "model_sha256": "0" * 64, "input_size": (8, 4), **kwargs})
