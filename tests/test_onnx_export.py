"""ONNX export: every registered model, metadata, fixed batch, fp16/int8, parity refusal."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import reidkit
from reidkit import onnx_export
from reidkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reidkit.engine.checkpoint import atomic_save
from reidkit.engine.config import Config
from reidkit.inference import InferenceError, OnnxReIDModel, ParityError, read_metadata
from reidkit.models import Backbone, ReIDModel, build_head, create_model, list_models

H, W = 64, 32


class TinyBackbone(Backbone):
    """Two conv-BN-ReLU stages: exports in a fraction of a second (the registered models are
    covered by the parametrised test)."""

    out_channels = [8, 16]

    def __init__(self):
        super().__init__()
        self.s1 = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.s2 = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())

    def forward(self, x):
        a = self.s1(x)
        return [a, self.s2(a)]


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = ReIDModel(TinyBackbone(), build_head("fc_bn_relu", 16, 0, dim=12))
    for bn in (model.backbone.s1[1], model.backbone.s2[1], model.head.embed[1]):  # non-trivial statistics
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _cosine(a, b):
    """Per-row cosine similarity, computed with numpy (a reference independent of reidkit)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _write_images(folder, n, size=(40, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.slow  # ~70 s for the 23 models on a 2-core CPU (PAUL's opset-20 retry is 17 s of it)
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_and_matches_torch(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    report = onnx_export.export_onnx(model, tmp_path / "m.onnx", input_size=(H, W), model_name=name, num_check_images=2)
    assert report.min_cosine >= 0.9999 and report.threshold == 0.9999
    onnx_model = OnnxReIDModel(tmp_path / "m.onnx")
    x = torch.randn(3, 3, H, W)  # another batch size than the export's example
    with torch.no_grad():
        ref = model(x).numpy()
    out = onnx_model(x).numpy()
    assert out.shape == ref.shape == (3, model.embedding_dim)
    assert _cosine(out, ref).min() >= 0.9999


def test_metadata_round_trip(tmp_path):
    report = onnx_export.export_onnx(_tiny(), tmp_path / "m.onnx", input_size=(H, W), model_name="tiny",
                                     l2_normalize=True, num_check_images=2)
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta == report.metadata
    assert (meta["input_height"], meta["input_width"]) == (str(H), str(W))
    assert json.loads(meta["mean"]) == list(IMAGENET_MEAN) and json.loads(meta["std"]) == list(IMAGENET_STD)
    assert meta["color_order"] == "rgb" and meta["embedding_dim"] == "12" and meta["precision"] == "fp32"
    assert meta["output_normalized"] == "true" and meta["model_name"] == "tiny"
    assert meta["reidkit_version"] == reidkit.__version__
    m = OnnxReIDModel(tmp_path / "m.onnx")
    assert (m.input_size, m.mean, m.std, m.color) == ((H, W), IMAGENET_MEAN, IMAGENET_STD, "rgb")
    assert m.output_normalized and m.embedding_dim == 12 and m.name == "tiny" and m.batch_size is None
    out = m(torch.randn(2, 3, H, W)).numpy()
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)  # normalised in the graph


@pytest.mark.parametrize("batch_size", [1, 2])
def test_fixed_batch_size_file_splits_and_pads(tmp_path, batch_size):
    model = _tiny()
    onnx_export.export_onnx(model, tmp_path / "m.onnx", input_size=(H, W), batch_size=batch_size, num_check_images=3)
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == batch_size
    m = OnnxReIDModel(tmp_path / "m.onnx")
    assert m.batch_size == batch_size
    x = torch.randn(5, 3, H, W)  # 5 is not a multiple of 2: the last chunk is padded
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(m(x).numpy() - ref).max() < 1e-4


def test_check_images_folder_is_used(tmp_path):
    folder = _write_images(tmp_path / "imgs", 5)
    report = onnx_export.export_onnx(_tiny(), tmp_path / "m.onnx", input_size=(H, W), check_images=folder, num_check_images=3)
    assert report.check_source == str(folder) and report.num_images == 3
    with pytest.raises(InferenceError, match="is not a folder of images"):
        onnx_export.export_onnx(_tiny(), tmp_path / "n.onnx", input_size=(H, W), check_images=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InferenceError, match="holds no images"):
        onnx_export.export_onnx(_tiny(), tmp_path / "n.onnx", input_size=(H, W), check_images=tmp_path / "empty")
    assert not (tmp_path / "n.onnx").exists()


def test_parity_failure_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old model")
    monkeypatch.setitem(onnx_export.PARITY_THRESHOLDS, "fp32", 1.5)  # no cosine reaches it
    with pytest.raises(ParityError, match=r"min cosine .* < 1\.5"):
        onnx_export.export_onnx(_tiny(), out, input_size=(H, W), num_check_images=2)
    assert out.read_bytes() == b"old model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left


def test_fp16_export_is_smaller_and_close(tmp_path):
    model = _tiny()
    fp32 = onnx_export.export_onnx(model, tmp_path / "a.onnx", input_size=(H, W), num_check_images=2)
    fp16 = onnx_export.export_onnx(model, tmp_path / "b.onnx", input_size=(H, W), precision="fp16", num_check_images=4)
    assert fp16.threshold == 0.999 and fp16.min_cosine >= 0.999
    assert fp16.size_bytes < fp32.size_bytes
    weights = [i for i in onnx.load(str(tmp_path / "b.onnx")).graph.initializer if len(i.dims) == 4]
    assert weights and {i.data_type for i in weights} == {onnx.TensorProto.FLOAT16}  # conv kernels in fp16
    m = OnnxReIDModel(tmp_path / "b.onnx")
    assert m.precision == "fp16"
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        assert _cosine(m(x).numpy(), model(x).numpy()).min() >= 0.999


def test_int8_export_needs_calibration_and_reports(tmp_path):
    with pytest.raises(InferenceError, match="calibration"):
        onnx_export.export_onnx(_tiny(), tmp_path / "q.onnx", input_size=(H, W), precision="int8", num_check_images=2)
    folder = _write_images(tmp_path / "cal", 8)
    report = onnx_export.export_onnx(_tiny(), tmp_path / "q.onnx", input_size=(H, W), precision="int8",
                                     calibration=folder, num_check_images=4)
    assert report.precision == "int8" and report.threshold is None and 0 < report.min_cosine <= 1
    graph = onnx.load(str(tmp_path / "q.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    assert read_metadata(tmp_path / "q.onnx")["precision"] == "int8"


def test_compare_on_dataset_reports_changes():
    from reidkit.data import create_dataset

    cfg = Config()
    cfg.data.height, cfg.data.width = H, W
    ds = create_dataset("synthetic", num_train_ids=0, num_test_ids=6, num_cameras=2, num_distractors=0, image_size=(H, W))
    model = _tiny()
    same = onnx_export.compare_on_dataset(model, model, ds, cfg)
    assert same["rank1_change"] == 0 and same["mAP_change"] == 0
    assert same["rank1"] == same["rank1_reference"]
    other = onnx_export.compare_on_dataset(model, _tiny(seed=1), ds, cfg)
    assert other["rank1_change"] == pytest.approx(other["rank1"] - other["rank1_reference"])


def test_bad_precision_is_a_clear_error(tmp_path):
    with pytest.raises(InferenceError, match="precision must be one of fp32, fp16, int8"):
        onnx_export.export_onnx(_tiny(), tmp_path / "m.onnx", precision="bf16")


def test_export_checkpoint_uses_run_input_size(tmp_path):
    torch.manual_seed(0)
    model = create_model("mobilenet_v2").eval()
    cfg = dataclasses.asdict(Config())
    cfg["data"]["height"], cfg["data"]["width"] = 96, 48
    atomic_save({"model": model.state_dict(), "model_name": "mobilenet_v2", "num_classes": 0, "model_kwargs": {},
                 "config": cfg}, tmp_path / "last.pt")
    report = onnx_export.export_checkpoint(tmp_path / "last.pt", tmp_path / "m.onnx", num_check_images=2)
    assert report.metadata["input_height"] == "96" and report.metadata["model_name"] == "mobilenet_v2"
    m = OnnxReIDModel(tmp_path / "m.onnx")
    x = torch.randn(2, 3, 96, 48)
    with torch.no_grad():
        assert _cosine(m(x).numpy(), model(x).numpy()).min() >= 0.9999


def test_export_registered_model(tmp_path):
    report = onnx_export.export_registered("mobilenet_v2", tmp_path / "m.onnx", input_size=(H, W), num_check_images=2)
    assert report.metadata["model_name"] == "mobilenet_v2" and report.metadata["embedding_dim"] == "1280"
    with pytest.raises(KeyError, match="mobilenet_v2"):
        onnx_export.export_registered("no_such_net", tmp_path / "n.onnx")


def test_opset_outside_the_exporters_range_is_refused_before_exporting(capfd):
    from reidkit.inference import convert

    with pytest.raises(ValueError, match=r"opset 99 is outside what torch's torchscript exporter writes \(7 to"):
        convert.torch_to_onnx(_tiny(), (H, W), opset=99)
    low, high = convert.supported_opsets()
    assert 7 <= low < 17 <= high
    for opset in (high + 1, low - 1):
        with pytest.raises(ValueError, match=rf"opset {opset} is outside"):
            convert.torch_to_onnx(_tiny(), (H, W), opset=opset)
    assert capfd.readouterr().out == ""


class _Unexportable(torch.nn.Module):
    """An embedding through an operator torch's ONNX exporter has no conversion for."""

    def forward(self, x):
        return torch.linalg.svdvals(x.mean(1))  # (B, min(H, W))


def test_a_failing_export_prints_nothing_on_stdout(capfd):
    import ctypes

    from reidkit.inference.convert import torch_to_onnx

    with pytest.raises(RuntimeError, match="ONNX export of _Unexportable"):
        torch_to_onnx(_Unexportable(), (H, W))
    ctypes.CDLL(None).fflush(None)  # what torch's C++ log still buffers would reach the descriptor now
    assert capfd.readouterr().out == ""  # torch prints the whole TorchScript IR graph here otherwise
    assert not torch._C._jit_is_onnx_log_enabled()  # torch leaves its ONNX log on; reidkit turns it off
