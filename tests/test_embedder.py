"""The tracker-facing Embedder: equals extraction, colour orders, boxes, sources, threads."""

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reidkit
from reidkit import Embedder
from reidkit.data import read_image
from reidkit.data.loader import eval_loader
from reidkit.data.transforms import TransformConfig, build_transforms
from reidkit.engine.checkpoint import atomic_save
from reidkit.engine.config import Config
from reidkit.evaluation.features import extract_features
from reidkit.models import Backbone, ReIDModel, build_head, create_model
from reidkit.onnx_export import export_onnx

H, W = 64, 32
CUHK01 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "CUHK01" / "campus"
WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenet_v2_imagenet_features.pth"


class TinyBackbone(Backbone):
    out_channels = [8, 16]

    def __init__(self):
        super().__init__()
        self.s1 = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.s2 = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU())

    def forward(self, x):
        a = self.s1(x)
        return [a, self.s2(a)]


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return ReIDModel(TinyBackbone(), build_head("fc_bn_relu", 16, 0, dim=12)).eval()


@pytest.fixture
def crops():
    """Six RGB uint8 crops of different sizes (the colours differ per channel)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40 + 7 * i, 20 + 3 * i, 3), dtype=np.uint8) for i in range(6)]


def _files(crops, folder):
    folder.mkdir(exist_ok=True)
    paths = []
    for i, c in enumerate(crops):
        Image.fromarray(c).save(folder / f"{i}.png")
        paths.append(str(folder / f"{i}.png"))
    return paths


def _extract(model, paths, size=(H, W), flip=False):
    """What ``reidkit extract`` computes: read_image + test transform + extract_features, then
    the L2 normalisation evaluation applies."""
    transform = build_transforms(TransformConfig(height=size[0], width=size[1]), train=False)
    loader = eval_loader([(p, 0, 0) for p in paths], read_image, transform, batch_size=4, num_workers=0)
    feats = extract_features(model, loader, backend="torch", flip=flip).features
    return torch.nn.functional.normalize(feats, dim=1).numpy()


@pytest.mark.parametrize("flip", [False, True])
def test_embed_equals_extract(tiny, crops, tmp_path, flip):
    paths = _files(crops, tmp_path / "imgs")
    emb = Embedder(tiny, input_size=(H, W), flip=flip).embed(paths)
    assert emb.dtype == np.float32 and emb.shape == (6, 12)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.abs(emb - _extract(tiny, paths, flip=flip)).max() < 1e-5


def test_arrays_pil_and_paths_agree_and_bgr(tiny, crops, tmp_path):
    e = Embedder(tiny, input_size=(H, W))
    from_paths = e.embed(_files(crops, tmp_path / "imgs"))
    from_rgb = e.embed(crops)
    from_pil = e.embed([Image.fromarray(c) for c in crops])
    bgr = [np.ascontiguousarray(c[..., ::-1]) for c in crops]
    from_bgr = e.embed(bgr, color="bgr")
    assert np.abs(from_rgb - from_paths).max() < 1e-6
    assert np.abs(from_pil - from_paths).max() < 1e-6
    assert np.abs(from_bgr - from_rgb).max() < 1e-6
    assert np.abs(e.embed(bgr, color="rgb") - from_rgb).max() > 1e-3  # BGR read as RGB differs
    assert e.describe().startswith("onnxruntime")


def test_batches_and_forced_torch_agree(tiny, crops):
    auto = Embedder(tiny, input_size=(H, W)).embed(crops)
    small = Embedder(tiny, input_size=(H, W), batch_size=4, backend="torch").embed(crops)
    assert (auto * small).sum(1).min() >= 0.9999  # rows are unit vectors: the dot is the cosine


def test_embed_boxes_clips_to_the_frame(tiny):
    frame = np.random.default_rng(1).integers(0, 256, (100, 60, 3), dtype=np.uint8)
    e = Embedder(tiny, input_size=(H, W))
    boxes = [[-10, -5, 30, 50], [10.2, 20.7, 30.1, 60.5], [40, 70, 90, 130]]
    expected = e.embed([frame[0:50, 0:30], frame[20:61, 10:31], frame[70:100, 40:60]], color="bgr")
    assert np.abs(e.embed_boxes(frame, boxes, color="bgr") - expected).max() < 1e-6
    assert e.embed_boxes(frame, np.zeros((0, 4))).shape == (0, 12)


@pytest.mark.parametrize("box", [[30, 30, 30, 50], [20, 40, 10, 50], [200, 200, 250, 260], [-50, 0, -1, 10]])
def test_empty_box_is_a_clear_error(tiny, box):
    frame = np.zeros((100, 60, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"box 1 .* is empty inside the 60 x 100 frame"):
        Embedder(tiny, input_size=(H, W)).embed_boxes(frame, [[0, 0, 10, 10], box])


def test_bad_inputs_are_clear_errors(tiny):
    e = Embedder(tiny, input_size=(H, W))
    with pytest.raises(ValueError, match="frame must be an H x W x 3 uint8"):
        e.embed_boxes(np.zeros((10, 10, 3), dtype=np.float32), [[0, 0, 5, 5]])
    with pytest.raises(ValueError, match=r"boxes_xyxy must be \(N, 4\)"):
        e.embed_boxes(np.zeros((10, 10, 3), dtype=np.uint8), [[0, 0, 5]])
    with pytest.raises(ValueError, match="crop 1 must be an H x W x 3 uint8"):
        e.embed([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="crop 0 has no pixels"):
        e.embed([np.zeros((0, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="color must be 'rgb' or 'bgr'"):
        e.embed([np.zeros((8, 8, 3), np.uint8)], color="hsv")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Embedder(tiny, batch_size=0)
    assert e.embed([]).shape == (0, 12)


def test_threads_get_identical_results(tiny, crops):
    e = Embedder(tiny, input_size=(H, W), batch_size=4)
    serial = e.embed(crops)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: e.embed(crops), range(8)))
    assert all(np.array_equal(r, serial) for r in results)


def test_sources_checkpoint_onnx_and_registered_name(crops, tmp_path):
    torch.manual_seed(0)
    model = create_model("mobilenet_v2").eval()  # BNNeck head: fixed by the backbone weights
    expected = Embedder(model, input_size=(96, 48), backend="torch").embed(crops)  # torch: no export per source
    cfg = dataclasses.asdict(Config())
    cfg["data"]["height"], cfg["data"]["width"] = 96, 48
    atomic_save({"model": model.state_dict(), "model_name": "mobilenet_v2", "num_classes": 0, "model_kwargs": {},
                 "config": cfg}, tmp_path / "last.pt")
    from_ckpt = Embedder(tmp_path / "last.pt", backend="torch")
    assert from_ckpt.input_size == (96, 48)
    assert np.abs(from_ckpt.embed(crops) - expected).max() < 1e-5
    export_onnx(model, tmp_path / "m.onnx", input_size=(96, 48), num_check_images=2)
    from_onnx = Embedder(str(tmp_path / "m.onnx"))
    assert from_onnx.input_size == (96, 48) and from_onnx.embedding_dim == 1280
    assert np.abs(from_onnx.embed(crops) - expected).max() < 1e-5
    torch.save(model.backbone.state_dict(), tmp_path / "backbone.pth")
    by_name = Embedder("mobilenet_v2", pretrained=tmp_path / "backbone.pth", input_size=(96, 48), backend="torch")
    assert np.abs(by_name.embed(crops) - expected).max() < 1e-5
    with pytest.raises(ValueError, match="neither an existing file .* registered: .*mobilenet_v2"):
        Embedder("no_such_model.pt")


def test_registered_name_without_weights_is_refused_unless_asked(tmp_path):
    with pytest.raises(ValueError, match=r"Embedder\('osnet_x0_25'\) has no weights: .*random_weights=True"):
        Embedder("osnet_x0_25")
    torch.save(create_model("osnet_x0_25").backbone.state_dict(), tmp_path / "b.pth")
    with pytest.raises(ValueError, match="not both"):
        Embedder("osnet_x0_25", pretrained=tmp_path / "b.pth", random_weights=True)
    untrained = Embedder("osnet_x0_25", random_weights=True, input_size=(64, 32), backend="torch")
    assert untrained.embed([np.zeros((64, 32, 3), dtype=np.uint8)]).shape[0] == 1


def test_embedder_is_exported_lazily():
    assert reidkit.Embedder is Embedder
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        reidkit.Nope  # noqa: B018


@pytest.mark.real_data
@pytest.mark.skipif(not (CUHK01.is_dir() and WEIGHTS.is_file()), reason="../shared data or weights absent")
def test_real_crops_equal_extract():
    paths = sorted(str(p) for p in CUHK01.glob("*.png"))[:6]
    model = create_model("mobilenet_v2", pretrained=WEIGHTS).eval()
    emb = Embedder(model, input_size=(128, 64)).embed(paths)
    assert np.abs(emb - _extract(model, paths, size=(128, 64))).max() < 1e-5
