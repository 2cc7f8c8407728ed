"""Activation maps (AMSFL Fig. 3): values, a numpy/Pillow reference, colours, the PNG and the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.actmap import actmap_grid, activation_maps, jet, overlay
from reidkit.cli import main
from reidkit.models import create_model

H, W = 64, 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("osnet_x0_25")


def _reference(model, images, stage):
    """Per image: numpy channel sum of |F|, Pillow bilinear upsampling, numpy min-max."""
    model.eval()
    out = []
    for img in images:
        with torch.no_grad():
            fmap = model.backbone(img[None])[stage - 1][0].numpy()  # (C, h, w)
        amap = Image.fromarray(np.abs(fmap).sum(axis=0).astype(np.float32))
        up = np.asarray(amap.resize((W, H), Image.BILINEAR), dtype=np.float64)  # (H, W)
        out.append((up - up.min()) / (up.max() - up.min()))
    return np.stack(out)


@pytest.mark.parametrize("stage", [1, 4])
def test_maps_are_normalised_and_match_reference(model, stage):
    images = torch.randn(3, 3, H, W)
    model.train()
    maps = activation_maps(model, images, stage)
    assert model.training  # mode restored
    assert maps.shape == (3, H, W)
    assert maps.min() >= 0 and torch.equal(maps.flatten(1).amax(1), torch.ones(3))
    np.testing.assert_allclose(maps.numpy(), _reference(model, images, stage), atol=1e-4)


def test_bad_stage_raises(model):
    with pytest.raises(ValueError, match="1-based"):
        activation_maps(model, torch.randn(1, 3, H, W), 0)


def test_jet_colours_and_overlay_blend():
    assert jet(np.array([0.0, 0.5, 1.0])).tolist() == [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
    img = Image.fromarray(np.full((4, 2, 3), 100, np.uint8))
    amap = np.full((4, 2), 0.5)
    assert np.array_equal(np.asarray(overlay(img, amap, alpha=0.0)), np.asarray(img))
    blended = np.asarray(overlay(img, amap, alpha=0.5))
    assert blended[0, 0].tolist() == [114, 178, 114]  # (100 + (128, 255, 128)) / 2, rounded half to even
    with pytest.raises(ValueError):
        overlay(img, np.zeros((1, 4, 2)))


def test_grid_layout(tmp_path):
    images = [Image.fromarray(np.full((10, 6, 3), v, np.uint8)) for v in (10, 200)]
    maps = torch.rand(2, H, W)
    path = actmap_grid(images, maps, tmp_path / "sub" / "grid.png", pad=4)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (2 * (H + 4) + 4, 2 * (W + 4) + 4, 3)
    assert (grid[4 : 4 + H, 4 : 4 + W] == 10).all()  # input row, first column
    want = np.asarray(overlay(images[1].resize((W, H), Image.BILINEAR), maps[1]))
    assert np.array_equal(grid[8 + H : 8 + 2 * H, 8 + W : 8 + 2 * W], want)  # overlay row, second column
    with pytest.raises(ValueError):
        actmap_grid(images, maps[:1], tmp_path / "bad.png")


def test_cli_writes_png(capsys, tmp_path):
    paths = []
    for i in range(2):
        rgb = np.random.default_rng(i).integers(0, 255, (40, 20, 3), dtype=np.uint8)
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rgb).save(paths[-1])
    out = tmp_path / "actmap.png"
    sizes = ["--set", f"data.height={H}", "--set", f"data.width={W}"]
    argv = ["actmap", "--model", "osnet_x0_25", "--images", *paths, "--stage", "3", "--output", str(out)]
    assert main(argv + sizes + ["--device", "cpu"]) == 0
    assert Image.open(out).size == (2 * (W + 4) + 4, 2 * (H + 4) + 4)
    assert main(argv[:-4] + ["--stage", "9", "--output", str(out)] + sizes) == 2
    assert "--stage 9" in capsys.readouterr().err


def test_cli_draws_paul_patches(tmp_path, capsys):
    path = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "patches.png"
    sizes = ["--set", "data.height=64", "--set", "data.width=32", "--device", "cpu"]
    assert main(["actmap", "--model", "paul_mobilenet_v2", "--images", str(path), "--patches",
                 "--output", str(out), *sizes]) == 0
    assert "6 patches" in capsys.readouterr().out and Image.open(out).size[0] > 0
    assert main(["actmap", "--model", "osnet_x0_25", "--images", str(path), "--patches",
                 "--output", str(out), *sizes]) == 2
    assert "PatchNet" in capsys.readouterr().err
