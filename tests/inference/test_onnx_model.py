"""ONNX files as reidkit models: metadata, third-party files without it, BGR/other statistics."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from reidkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from reidkit.inference import OnnxModelError, OnnxReIDModel, read_metadata
from reidkit.inference.convert import torch_to_onnx
from reidkit.onnx_export import export_onnx

H, W = 64, 32


def _save(graph, path, metadata=None):
    for key, value in (metadata or {}).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(path))
    return path


class OtherConvention(nn.Module):
    """``tiny`` behind another input convention: BGR order, its own mean/std (given in B, G, R
    order, [0, 1] pixel units). Fed that convention it gives ``tiny`` of reidkit's input."""

    def __init__(self, tiny, mean_bgr, std_bgr):
        super().__init__()
        self.tiny = tiny
        self.register_buffer("mean", torch.tensor(mean_bgr).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std_bgr).view(1, 3, 1, 1))
        self.register_buffer("im_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("im_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x_bgr):
        rgb = (x_bgr * self.std + self.mean).flip(1)  # raw [0, 1] pixels, RGB
        return self.tiny((rgb - self.im_mean) / self.im_std)


def _dynamic_size(graph):
    """The graph with symbolic H and W (as exports with dynamic spatial axes have)."""
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    return graph


def test_file_without_metadata_names_what_is_missing(tiny, tmp_path):
    path = _save(_dynamic_size(torch_to_onnx(tiny, (H, W))), tmp_path / "third_party.onnx")
    with pytest.raises(OnnxModelError, match=r"--input-size H W .*--mean R G B, --std R G B"):
        OnnxReIDModel(path)
    with pytest.raises(OnnxModelError, match=r"no reidkit metadata for --std R G B;"):
        OnnxReIDModel(path, input_size=(H, W), mean=IMAGENET_MEAN)
    m = OnnxReIDModel(path, input_size=(H, W), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert m.name == "third_party" and m.precision == "unknown" and m.embedding_dim == 12  # from the output shape
    x = torch.randn(3, 3, H, W)
    with torch.no_grad():
        assert np.abs(m(x).numpy() - tiny(x).numpy()).max() < 1e-5


def test_fixed_shape_file_gives_its_input_size(tiny, tmp_path):
    path = _save(torch_to_onnx(tiny, (H, W), batch_size=1), tmp_path / "openvino_like.onnx")
    with pytest.raises(OnnxModelError) as err:
        OnnxReIDModel(path)
    assert "--input-size H W" not in str(err.value)  # H, W read from the graph
    m = OnnxReIDModel(path, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert m.input_size == (H, W) and m.batch_size == 1 and m.embedding_dim == 12


@pytest.mark.parametrize("mean_bgr,std_bgr", [((0.0, 0.0, 0.0), (1 / 255,) * 3), ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])
def test_bgr_file_with_its_own_statistics(tiny, tmp_path, mean_bgr, std_bgr):
    net = OtherConvention(tiny, mean_bgr, std_bgr).eval()
    path = _save(torch_to_onnx(net, (H, W)), tmp_path / "bgr.onnx")
    m = OnnxReIDModel(path, input_size=(H, W), mean=mean_bgr, std=std_bgr, bgr=True)
    assert m.color == "bgr"
    x = torch.randn(4, 3, H, W)  # reidkit's input: RGB, ImageNet-normalised
    with torch.no_grad():
        ref = tiny(x).numpy()
    assert np.abs(m(x).numpy() - ref).max() < 1e-4
    rgb = OnnxReIDModel(path, input_size=(H, W), mean=mean_bgr, std=std_bgr, bgr=False)
    assert np.abs(rgb(x).numpy() - ref).max() > 1e-3  # the channel order matters


def test_metadata_values_are_checked(tiny, tmp_path):
    meta = {"input_height": "64", "input_width": "32", "mean": "[0.5, 0.5]", "std": "[0.2, 0.2, 0.2]"}
    path = _save(torch_to_onnx(tiny, (H, W)), tmp_path / "bad.onnx", meta)
    with pytest.raises(OnnxModelError, match=r"mean is \[0\.5, 0\.5\]; expected 3 numbers"):
        OnnxReIDModel(path)
    m = OnnxReIDModel(path, mean=(0.5, 0.5, 0.5))  # an override replaces the bad value
    assert m.mean == (0.5, 0.5, 0.5) and m.std == (0.2, 0.2, 0.2)
    bad_color = _save(torch_to_onnx(tiny, (H, W)), tmp_path / "c.onnx", {**meta, "mean": "[0,0,0]", "color_order": "yuv"})
    with pytest.raises(OnnxModelError, match="color_order is 'yuv'"):
        OnnxReIDModel(bad_color)


def test_model_interface(tiny, tmp_path):
    export_onnx(tiny, tmp_path / "m.onnx", input_size=(H, W), num_check_images=2)
    m = OnnxReIDModel(tmp_path / "m.onnx")
    assert m.eval() is m and m.to("cpu") is m and m.to(memory_format=torch.channels_last) is m
    assert list(m.parameters()) == []
    with pytest.raises(OnnxModelError, match=r"takes \(B, 3, 64, 32\) inputs, got \(1, 3, 32, 32\); set the input size"):
        m(torch.randn(1, 3, 32, 32))
    with pytest.raises(OnnxModelError, match="no training outputs or local features"):
        m.forward_train(torch.randn(1, 3, H, W))
    assert OnnxReIDModel(tmp_path / "m.onnx", input_size=(H, W)).input_size == (H, W)  # agrees: accepted


def test_input_size_that_contradicts_a_fixed_graph_is_refused_at_load(tiny, tmp_path):
    export_onnx(tiny, tmp_path / "m.onnx", input_size=(H, W), num_check_images=2)  # fixed 64 x 32 graph
    with pytest.raises(OnnxModelError, match=r"m.onnx'?: --input-size 96 48 contradicts the graph's fixed input "
                       r"size 64 x 32 .*--input-size 64 32") as err:
        OnnxReIDModel(tmp_path / "m.onnx", input_size=(96, 48))
    assert "\n" not in str(err.value)
    dynamic = _save(_dynamic_size(torch_to_onnx(tiny, (H, W))), tmp_path / "dynamic.onnx")
    bigger = OnnxReIDModel(dynamic, input_size=(96, 48), mean=IMAGENET_MEAN, std=IMAGENET_STD)  # dynamic H, W: any
    assert bigger.input_size == (96, 48)
    with torch.no_grad():
        assert bigger(torch.randn(1, 3, 96, 48)).shape == (1, 12)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxReIDModel(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(OnnxModelError, match="junk.onnx"):
        read_metadata(tmp_path / "junk.onnx")
