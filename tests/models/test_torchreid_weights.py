"""Loading torchreid model-zoo checkpoints and the strict weights loader.

The key layout is checked two ways: against torchreid's published key names and shapes (a list
generated from torchreid 0.2.5's own modules, ``data/torchreid_keys.json``, which does not go
through reidkit's mapping), and by round trips (a reidkit model written in torchreid's layout, in
each wrapping torchreid files come in, loads back to the same embedding, exactly).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reidkit.models import WeightsError, WeightsFile, create_model
from reidkit.models import torchreid as tr
from reidkit.models.osnet import OSNetBackbone, load_backbone_weights
from reidkit.models.pretrained import WeightsFileNotFoundError, load_state_dict_file, read_weights

REFERENCE = json.loads((Path(__file__).parent / "data" / "torchreid_keys.json").read_text())
ARCHS = sorted(REFERENCE["shapes"])
X = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))


def reference_state(arch: str) -> dict[str, tuple[int, ...]]:
    """torchreid's ``state_dict()`` of ``arch`` as ``{key: shape}``, from the JSON list."""
    keys = REFERENCE["keys"][REFERENCE["key_sets"][arch]]
    shapes = [
        () if s == "-" else tuple(int(d) for d in s.split("x"))
        for s in REFERENCE["shapes"][arch].split(" ")
    ]
    assert len(keys) == len(shapes)
    return dict(zip(keys, shapes))


def randomise(model: nn.Module) -> nn.Module:
    """Non-default norm statistics, affine weights and biases (convolutions keep their random
    init), so that every tensor must be loaded for the embedding to match."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and t.ndim == 1:
                centre = 1.0 if name.endswith(("running_var", "weight")) else 0.0
                t.copy_(centre + torch.rand(t.shape, generator=gen) * 0.4 - 0.2)
    return model.eval()


def embed(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def assert_same_weights(dst: nn.Module, src: nn.Module, skip: str = "head.classifier.") -> None:
    """Every tensor equal, key by key (two reidkit models: equal weights, equal embeddings).

    Cheaper than a forward pass, which costs seconds on a first call here; the embedding itself
    is compared in a few tests below.
    """
    a = {k: v for k, v in dst.state_dict().items() if not k.startswith(skip)}
    b = {k: v for k, v in src.state_dict().items() if not k.startswith(skip)}
    assert list(a) == list(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# --- (2) torchreid's own key names and shapes map 1:1 onto reidkit's ---------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_published_torchreid_layout_maps_one_to_one(arch):
    ref = reference_state(arch)
    layout, name = tr.identify({k: torch.empty(s) for k, s in ref.items()})
    assert (layout, name) == (tr.ARCH_LAYOUTS[arch], arch)
    renamed, origin = tr.to_reidkit({k: torch.empty(s) for k, s in ref.items()}, layout)
    kwargs = {"last_stride": 2, "head": "pool"} if arch == "resnet50" else {}  # torchreid's
    own = create_model(arch, num_classes=1000, **kwargs).state_dict()
    assert len(renamed) == len(ref)  # no two torchreid keys land on one reidkit key
    assert sorted(renamed) == sorted(own)
    wrong = [k for k in own if tuple(own[k].shape) != tuple(renamed[k].shape)]
    assert wrong == []
    assert set(origin.values()) == set(ref)


# --- (1) round trips in every wrapping ---------------------------------------------------------


def torchreid_state(model: nn.Module, arch: str) -> dict[str, torch.Tensor]:
    return tr.to_torchreid(model, tr.ARCH_LAYOUTS[arch])


WRAPPINGS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s},
    "module_prefix": lambda s: {f"module.{k}": v for k, v in s.items()},
    "no_classifier": lambda s: {k: v for k, v in s.items() if not k.startswith("classifier.")},
    "training_checkpoint": lambda s: {  # torchreid's save_checkpoint: rank1 is a NumPy scalar
        "state_dict": {f"module.{k}": v for k, v in s.items()},
        "epoch": 60,
        "rank1": np.float32(0.87),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0015, "params": [0, 1]}]},
    },
}


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("arch", ["osnet_x0_25", "osnet_ain_x0_25"])
def test_torchreid_file_in_every_wrapping_gives_the_same_embedding(tmp_path, arch, wrapping):
    src = randomise(create_model(arch, num_classes=11))
    path = tmp_path / "zoo.pth.tar"
    torch.save(WRAPPINGS[wrapping](torchreid_state(src, arch)), path)
    dst = create_model(arch, pretrained=str(path))  # strict: raises if anything did not fit
    assert dst.num_classes == 0  # the classifier of 11 identities is skipped silently
    assert_same_weights(dst, src)
    if wrapping == "training_checkpoint":
        torch.testing.assert_close(embed(dst), embed(src), rtol=0, atol=0)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ("osnet_x0_25", "osnet_ain_x0_25")])
def test_every_architecture_round_trips(tmp_path, arch):
    kwargs = {"last_stride": 2, "head": "pool"} if arch == "resnet50" else {}
    src = randomise(create_model(arch, num_classes=7, **kwargs))
    path = tmp_path / "zoo.pth"
    torch.save(WRAPPINGS["training_checkpoint"](torchreid_state(src, arch)), path)
    dst = create_model(arch, num_classes=7, pretrained=path)  # same classes: classifier loads too
    assert_same_weights(dst, src, skip="no such key")
    if arch in ("osnet_ibn_x1_0", "osnet_ain_x1_0"):
        torch.testing.assert_close(embed(dst), embed(src), rtol=0, atol=0)


def test_torchreid_resnet50_is_rebuilt_as_torchreids_architecture(tmp_path):
    src = randomise(create_model("resnet50", num_classes=3, last_stride=2, head="pool"))
    path = tmp_path / "resnet50_market.pth"
    torch.save(torchreid_state(src, "resnet50"), path)
    dst = create_model("resnet50", pretrained=path)
    assert dst.backbone.layer4[0].conv2.stride == (2, 2)  # torchreid's last stride
    assert dst.embedding_dim == 2048
    pooled = src.forward_train(X).feature_maps[-1].mean(dim=(2, 3))  # torchreid's test feature
    torch.testing.assert_close(embed(dst), pooled, rtol=0, atol=1e-6)
    chosen = create_model("resnet50", pretrained=path, last_stride=1, head="bnneck")
    assert chosen.backbone.layer4[0].conv2.stride == (1, 1)  # explicit arguments win
    torch.testing.assert_close(chosen.backbone.conv1.weight, src.backbone.conv1.weight)


def test_resnet50_trunk_without_classifier_warns_with_both_readings(tmp_path, recwarn):
    """torchreid's resnet50 saved without its classifier has torchvision's trunk keys: the
    default reading (reidkit's, last stride 1) is named in one warning with how to choose."""
    src = randomise(create_model("resnet50", num_classes=0, last_stride=2, head="pool"))
    path = tmp_path / "resnet50_no_classifier.pth"
    torch.save(torchreid_state(src, "resnet50"), path)  # num_classes=0: no classifier keys
    default = create_model("resnet50", pretrained=path)
    [warning] = [str(w.message) for w in recwarn if "ResNet-50 trunk" in str(w.message)]
    assert "\n" not in warning and "resnet50_no_classifier.pth" in warning
    assert "last stride 1, new BNNeck head" in warning and "last_stride=2, head='pool'" in warning
    assert "model.kwargs.last_stride=2" in warning
    assert default.backbone.layer4[0].conv2.stride == (1, 1)
    recwarn.clear()
    chosen = create_model("resnet50", pretrained=path, last_stride=2, head="pool")
    assert [w for w in recwarn if "ResNet-50 trunk" in str(w.message)] == []  # an explicit choice: silent
    torch.testing.assert_close(embed(chosen), embed(src), rtol=0, atol=0)


def test_torchreid_file_into_a_bare_backbone_skips_the_head(tmp_path):
    src = randomise(create_model("osnet_x0_25", num_classes=5))
    path = tmp_path / "zoo.pth"
    torch.save(torchreid_state(src, "osnet_x0_25"), path)
    backbone = OSNetBackbone(width=0.25)
    report = load_backbone_weights(backbone, path)
    assert report.source == "torchreid osnet_x0_25"
    head_keys = [k for k in torch.load(path) if k.startswith(("fc.", "classifier."))]
    assert sorted(report.ignored) == sorted(head_keys)
    assert_same_weights(backbone, src.backbone)


def test_reidkit_whole_model_and_backbone_files_still_load(tmp_path):
    src = randomise(create_model("osnet_ibn_x1_0", num_classes=4))
    torch.save(src.state_dict(), tmp_path / "model.pth")
    torch.save({"model": src.state_dict(), "model_name": "osnet_ibn_x1_0"}, tmp_path / "ckpt.pt")
    for name in ("model.pth", "ckpt.pt"):
        assert_same_weights(create_model("osnet_ibn_x1_0", pretrained=tmp_path / name), src)
    torch.save(src.backbone.state_dict(), tmp_path / "backbone.pth")  # head stays new: no error
    dst = create_model("osnet_ibn_x1_0", pretrained=tmp_path / "backbone.pth")
    assert_same_weights(dst.backbone, src.backbone)


# --- (3) what does not fit is an error that lists it; strict=False loads the rest -------------


@pytest.fixture
def zoo_state():
    src = randomise(create_model("osnet_x0_25"))
    return src, torchreid_state(src, "osnet_x0_25")


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_and_unexpected_keys_are_listed(tmp_path, zoo_state):
    src, state = zoo_state
    del state["conv5.conv.weight"], state["conv2.0.gate.fc1.bias"]
    state["conv9.extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        create_model("osnet_x0_25", pretrained=path)
    text = one_line(err)
    assert "partial.pth" in text and "torchreid osnet_x0_25" in text
    assert "2 model tensors missing" in text
    assert "backbone.conv5.0.weight" in text and "backbone.conv2.0.gate.fc1.bias" in text
    assert "1 file keys that fit nowhere: conv9.extra.weight" in text

    with pytest.warns(UserWarning, match="backbone.conv5.0.weight.*conv9.extra.weight"):
        dst = create_model("osnet_x0_25", pretrained=WeightsFile(path, strict=False))
    loaded, source = dst.backbone.conv2[0].reduce[0].weight, src.backbone.conv2[0].reduce[0].weight
    assert torch.equal(loaded, source)
    assert not torch.equal(dst.backbone.conv5[0].weight, src.backbone.conv5[0].weight)  # kept its init


def test_partial_head_and_wrong_shapes_are_errors(tmp_path, zoo_state):
    _, state = zoo_state
    del state["fc.1.running_var"]
    state["conv5.conv.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as err:
        create_model("osnet_x0_25", pretrained=tmp_path / "bad.pth")
    text = one_line(err)
    assert "head.embed.1.running_var" in text
    assert "backbone.conv5.0.weight (128, 64, 1, 1) vs (128, 128, 1, 1)" in text


def test_checkpoint_of_another_architecture_is_named(tmp_path):
    state = torchreid_state(create_model("osnet_ain_x0_25"), "osnet_ain_x0_25")
    torch.save(state, tmp_path / "ain.pth")
    with pytest.raises(WeightsError, match="torchreid's osnet_ain_x0_25, not osnet_x0_25"):
        create_model("osnet_x0_25", pretrained=tmp_path / "ain.pth")
    with pytest.raises(WeightsError, match="torchreid's osnet_ain_x0_25, not osnet_ain_x1_0"):
        create_model("osnet_ain_x1_0", pretrained=tmp_path / "ain.pth")


def test_long_lists_are_truncated(tmp_path):
    torch.save({"backbone.stem.0.0.weight": torch.zeros(16, 3, 7, 7)}, tmp_path / "stem.pth")
    with pytest.raises(WeightsError, match=r"model tensors missing .*\(\d+ more\)") as err:
        create_model("osnet_x0_25", pretrained=tmp_path / "stem.pth")
    assert len(str(err.value)) < 1000


def test_nothing_fits_even_non_strict(tmp_path):
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="other.pth.*none of its 1 tensors fits osnet_x0_25"):
        create_model("osnet_x0_25", pretrained=WeightsFile(tmp_path / "other.pth", strict=False))


# --- (4) unreadable and unsafe files -----------------------------------------------------------


class Payload:
    """Unpickling this would create ``marker`` (``open(marker, "w")``): it must never happen."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle", "bare pickle"])
def test_pickle_payload_is_refused_without_running(tmp_path, writer, recwarn):
    marker, path = tmp_path / "ran", tmp_path / "evil.pth"
    obj = {"conv1.conv.weight": torch.zeros(1), "x": Payload(marker)}
    if writer == "torch":
        torch.save(obj, path)
    else:  # pickle.dumps: protocol 4/5 frames, which torch's weights-only unpickler refuses first
        path.write_bytes(pickle.dumps(obj if writer == "pickle" else Payload(marker)))
    with pytest.raises(WeightsError) as err:
        create_model("osnet_x0_25", pretrained=path)
    text = one_line(err)
    assert not marker.exists()
    assert "evil.pth" in text and "weights_only=False" not in text
    assert "not a plain tensor file" in text or "not a torch weights file" in text
    if writer == "torch":
        assert "pickled Python objects" in text and "never executes" in text
    else:  # a valid pickle: not described as bytes that are no pickle, and torch's warning is silenced
        assert "a plain pickle, not written by torch.save" in text and "opcode" not in text
        assert [str(w.message) for w in recwarn if "pickle protocol" in str(w.message)] == []


def test_bytes_that_are_no_pickle_are_named_so(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(bytes([0x95, 0xFF]) * 8)  # FRAME, then a byte that is no pickle opcode
    with pytest.raises(WeightsError, match=r"junk.pth' is not a torch weights file \(bytes that are not a pickle"):
        read_weights(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(WeightsFileNotFoundError, match="nope.pth.*does not exist"):
        read_weights(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError, for callers catching that
        create_model("osnet_x0_25", pretrained=tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="not a regular file"):
        read_weights(tmp_path)
    (tmp_path / "text.pth").write_text("not a tensor file\n")
    with pytest.raises(WeightsError, match="text.pth.*not a torch weights file") as err:
        read_weights(tmp_path / "text.pth")
    one_line(err)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        read_weights(tmp_path / "list.pth")
    torch.save({"a": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match="entries epoch are not tensors"):
        read_weights(tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match="pretrained must be"):
        create_model("osnet_x0_25", pretrained=3)


def test_strict_argument_overrides_the_weights_file(tmp_path, zoo_state):
    src, state = zoo_state
    del state["conv5.conv.weight"]
    torch.save(state, tmp_path / "p.pth")
    model = create_model("osnet_x0_25")
    with pytest.warns(UserWarning):
        report = load_state_dict_file(model, tmp_path / "p.pth", strict=False, arch="osnet_x0_25")
    assert report.missing == ["backbone.conv5.0.weight"]
    assert "backbone.conv5.1.weight" in report.loaded
    with pytest.raises(WeightsError):
        load_state_dict_file(model, WeightsFile(tmp_path / "p.pth", strict=False), strict=True)
