"""No code from checkpoints or weight files, ever; old reidkit checkpoints still load.

Each crafted file carries a pickled payload that would create a marker file when unpickled
with ``weights_only=False``; every command that reads checkpoints or weights must refuse it with
one line naming the file, and the marker must never appear.
"""

import random

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from reidkit.cli import main
from reidkit.engine.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if code runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _image(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture()
def crafted(tmp_path, tiny_run):
    """A valid reidkit checkpoint with a payload entry, and a bare pickle payload."""
    marker = tmp_path / "PWNED"
    ckpt = torch.load(tiny_run / "last.pt", weights_only=True)
    ckpt["extra"] = Payload(marker)
    poisoned = tmp_path / "poisoned.pt"
    torch.save(ckpt, poisoned)
    bare = tmp_path / "bare.pt"
    torch.save(Payload(marker), bare)
    return marker, poisoned, bare


def _commands(ckpt, tmp_path):
    img = _image(tmp_path / "0001_c1_x.png")
    gallery = tmp_path / "gallery"
    gallery.mkdir(exist_ok=True)
    _image(gallery / "0001_c2_y.png")
    return {
        "eval": ["eval", "--checkpoint", ckpt],
        "extract": ["extract", "--checkpoint", ckpt, "--output", str(tmp_path / "f.npz")],
        "search": ["search", "--checkpoint", ckpt, "--gallery", str(gallery), "--query", img,
                   "--output", str(tmp_path / "s.png")],
        "actmap": ["actmap", "--checkpoint", ckpt, "--images", img, "--output", str(tmp_path / "a.png")],
        "export": ["export", "--checkpoint", ckpt, "--output", str(tmp_path / "m.onnx")],
        "index build": ["index", "build", "--checkpoint", ckpt, "--images", str(gallery),
                        "--output", str(tmp_path / "idx")],
        "compare": ["compare", ckpt, ckpt],
    }


@pytest.mark.parametrize("which", ["poisoned", "bare"])
def test_no_command_runs_a_checkpoint_payload(crafted, tmp_path, capsys, which):
    marker, poisoned, bare = crafted
    path = str(poisoned if which == "poisoned" else bare)
    for name, argv in _commands(path, tmp_path).items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and path in err and "Traceback" not in err, (name, err)
        assert not marker.exists(), f"{name} ran the payload"


def test_resume_refuses_a_payload_checkpoint(crafted, tmp_path, tiny_config_file, capsys):
    marker, poisoned, _ = crafted
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(poisoned.read_bytes())
    assert main(["train", str(tiny_config_file), "--output", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "last.pt" in err and "refused" in err
    assert not marker.exists()


def test_pretrained_weights_payload_is_refused(crafted, tmp_path, tiny_config_file, capsys):
    marker, _, bare = crafted
    weights = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, weights)
    for path in (weights, bare):
        argv = ["eval", "--model", "osnet_x0_25", "--pretrained", str(path), "--dataset", "synthetic"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and "weights_only=False" not in err, err
    cfg = yaml.safe_load(tiny_config_file.read_text())
    cfg["model"]["pretrained"] = str(weights)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(cfg_file), "--output", str(tmp_path / "r")]) == 2
    assert str(weights) in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_format1_checkpoint_still_loads_and_resumes(tiny_run, tmp_path, tiny_config_file):
    """reidkit 0.1 stored NumPy's RNG state as an array; such files load and resume."""
    ckpt = torch.load(tiny_run / "last.pt", weights_only=True)
    name, keys, pos, has_gauss, cached = ckpt["rng"]["numpy"]
    ckpt["rng"]["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    ckpt["rng"]["python"] = random.getstate()
    del ckpt["format_version"], ckpt["log"]
    run = tmp_path / "old"
    run.mkdir()
    torch.save(ckpt, run / "last.pt")
    with pytest.raises(Exception):  # the legacy file really needs more than weights_only allows
        torch.load(run / "last.pt", weights_only=True)
    loaded = load_checkpoint(run / "last.pt", for_resume=True)
    assert isinstance(loaded["rng"]["numpy"][1], list)
    model, _ = model_from_checkpoint(run / "last.pt")
    assert model(torch.zeros(2, 3, 32, 16)).shape[0] == 2
    (run / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    cfg = yaml.safe_load(tiny_config_file.read_text())
    cfg["train"]["max_epochs"] = 2
    cfg_file = tmp_path / "c2.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(cfg_file), "--output", str(run), "--resume"]) == 0


def test_foreign_and_corrupt_files_are_clear_errors(tmp_path, tiny_run):
    cases = {
        "text.pt": b"hello, not a checkpoint",
        "empty.pt": b"",
        "truncated.pt": (tiny_run / "last.pt").read_bytes()[:5000],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(tmp_path / name)
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="lacks model"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="is not a regular file"):
        load_checkpoint(tmp_path)
    state = torch.load(tiny_run / "last.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, tmp_path / "model_only.pt")
    with pytest.raises(CheckpointError, match="no training state"):
        load_checkpoint(tmp_path / "model_only.pt", for_resume=True)


def test_paul_source_checkpoint_payload_is_refused(crafted, tmp_path, capsys):
    """PAUL's target stage reads the source stage's checkpoint (method.options.source_checkpoint)."""
    import yaml

    from reidkit_testing import TINY_RUN

    marker, poisoned, _ = crafted
    cfg = {**TINY_RUN, "model": {"name": "paul_mobilenet_v2", "kwargs": {"num_patches": 2, "patch_dim": 8}},
           "method": {"name": "paul", "options": {"source_checkpoint": str(poisoned)}},
           "data": {**TINY_RUN["data"], "sampler": "random", "batch_size": 8}}
    config = tmp_path / "paul.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(poisoned) in err, err
    assert not marker.exists()
