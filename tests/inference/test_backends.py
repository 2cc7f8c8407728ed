"""The inference seam: torch vs onnxruntime parity, fixed batches, automatic selection."""

import warnings

import numpy as np
import pytest
import torch

from reidkit.inference import backends
from reidkit.inference.backends import (
    InferenceError,
    OnnxRuntimeBackend,
    ParityError,
    TorchBackend,
    onnx_backend_for,
    parity,
    select_backend,
)
from reidkit.inference.convert import torch_to_onnx

H, W = 64, 32


def _np_cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnxruntime_backend_matches_torch(tiny):
    x = torch.randn(6, 3, H, W)
    fast = OnnxRuntimeBackend(torch_to_onnx(tiny, (H, W)).SerializeToString())
    with torch.no_grad():
        ref = tiny(x).numpy()
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == (6, 12)
    assert np.abs(out.numpy() - ref).max() < 1e-5 and _np_cosine(out, ref).min() >= 0.9999
    assert fast.describe().startswith("onnxruntime (fp32, ")


@pytest.mark.parametrize("batch_size", [1, 4])
def test_fixed_batch_graph_is_split_and_padded(tiny, batch_size):
    fixed = OnnxRuntimeBackend(torch_to_onnx(tiny, (H, W), batch_size=batch_size).SerializeToString())
    assert fixed.batch_size == batch_size and f"fixed batch {batch_size}" in fixed.describe()
    x = torch.randn(7, 3, H, W)
    with torch.no_grad():
        ref = tiny(x).numpy()
    assert np.abs(fixed(x).numpy() - ref).max() < 1e-5


def test_wrong_input_size_is_a_clear_error(tiny):
    fast = OnnxRuntimeBackend(torch_to_onnx(tiny, (H, W)).SerializeToString())
    with pytest.raises(InferenceError, match=r"takes \(B, 3, 64, 32\) images, got \(2, 3, 32, 32\)"):
        fast(torch.randn(2, 3, 32, 32))


def test_parity_numbers_against_plain_formulas():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, -1.0]])
    max_abs, min_cos = parity(a, b)
    assert max_abs == 2.0 and min_cos == pytest.approx(0.0, abs=1e-12)  # second rows are orthogonal


def test_auto_selects_onnxruntime_on_cpu_with_parity(tiny):
    x = torch.randn(5, 3, H, W)
    chosen = select_backend(tiny, x, "cpu", "auto", amp=False)
    assert chosen.name == "onnxruntime"
    assert _np_cosine(chosen(x), TorchBackend(tiny)(x)).min() >= 0.9999


def test_forced_torch_and_bad_name(tiny):
    x = torch.randn(2, 3, H, W)
    assert select_backend(tiny, x, "cpu", "torch").name == "torch"
    with pytest.raises(InferenceError, match="backend must be one of auto, torch, onnxruntime"):
        select_backend(tiny, x, "cpu", "tensorrt")
    with pytest.raises(InferenceError, match="CPU fast path"):
        select_backend(tiny, x, "cuda", "onnxruntime")


def test_auto_falls_back_to_torch_when_parity_fails(tiny, monkeypatch):
    monkeypatch.setattr(backends, "PARITY_MIN_COSINE", 1.5)  # unreachable
    x = torch.randn(3, 3, H, W)
    with pytest.warns(UserWarning, match="differ from torch's.*running torch"):
        chosen = select_backend(tiny, x, "cpu", "auto", amp=False)
    assert chosen.name == "torch"
    with pytest.raises(ParityError, match="min cosine"):
        select_backend(tiny, x, "cpu", "onnxruntime")


def test_auto_falls_back_to_torch_when_export_fails(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("ONNX export of ReIDModel failed: unsupported operator")

    monkeypatch.setattr(backends, "onnx_backend_for", broken)
    with pytest.warns(UserWarning, match="fast path unavailable.*unsupported operator"):
        chosen = select_backend(tiny, torch.randn(2, 3, H, W), "cpu", "auto", amp=False)
    assert chosen.name == "torch"


def test_native_bf16_cpu_runs_float32_unless_bf16_is_asked(tiny, monkeypatch):
    """bfloat16 changes the embeddings (~1e-3), so a CPU with native bf16 still runs float32
    by default (onnxruntime for ``auto``, eager fp32 for ``torch``); ``amp=True`` asks for bf16."""
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    x = torch.randn(4, 3, H, W)
    assert select_backend(tiny, x, "cpu", "auto").describe().startswith("onnxruntime (fp32")
    forced = select_backend(tiny, x, "cpu", "torch")
    assert not forced.amp and not forced.channels_last
    assert np.abs(forced(x).numpy() - TorchBackend(tiny)(x).numpy()).max() == 0
    asked = select_backend(tiny, x, "cpu", "auto", amp=True)
    assert asked.name == "torch" and asked.amp and asked.channels_last
    assert _np_cosine(asked(x), TorchBackend(tiny)(x)).min() >= 0.999
    asked.close()


def test_export_cache_follows_weight_changes(tiny):
    first = onnx_backend_for(tiny, (H, W))
    assert onnx_backend_for(tiny, (H, W)) is first  # same weights: no second export
    with torch.no_grad():
        tiny.head.embed[0].weight.mul_(2.0)  # in place, like an optimiser step
    second = onnx_backend_for(tiny, (H, W))
    assert second is not first
    x = torch.randn(2, 3, H, W)
    assert np.abs(second(x).numpy() - TorchBackend(tiny)(x).numpy()).max() < 1e-5


def test_torch_backend_channels_last_is_undone(tiny):
    runner = TorchBackend(tiny, "cpu", amp=False, channels_last=True)
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        ref = tiny(x)
    assert torch.allclose(runner(x), ref, atol=1e-5)
    runner.close()
    assert tiny.backbone.s1[0].weight.is_contiguous()


def test_no_warning_on_the_normal_path(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_backend(tiny, torch.randn(2, 3, H, W), "cpu", "auto", amp=False)
