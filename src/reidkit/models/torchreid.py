"""torchreid's checkpoint key layout, mapped onto reidkit's modules: the one place the two meet.

torchreid (Zhou and Xiang, "Torchreid: A Library for Deep Learning Person Re-Identification in
Pytorch", arXiv:1910.10093; github.com/KaiyangZhou/deep-person-reid) publishes the model-zoo
checkpoints of OSNet. Its networks compute what reidkit's do, layer for layer, but name their
modules differently. This module lists, for each torchreid source file (a *layout*), every
torchreid module path and the reidkit module path that holds the same tensors. Tensor names
(``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) are the same on
both sides, so a key maps as ``<module path>.<tensor name>``.

Layouts (torchreid file -> reidkit model):

* ``"osnet"``, ``torchreid/models/osnet.py``: ``osnet_x1_0``, ``osnet_x0_75``, ``osnet_x0_5``,
  ``osnet_x0_25`` and ``osnet_ibn_x1_0``. Each transition (1x1 conv + 2x2 average pool) is the
  *last* entry of conv2 and conv3 (``conv2.2``, ``conv3.2``); reidkit makes it the *first* entry
  of the next stage (``conv3.0``, ``conv4.0``), so torchreid's ``conv3.0`` is reidkit's
  ``conv3.1``. The streams are ``conv2a`` .. ``conv2d``; OSNet-IBN's ``IN`` (after the residual
  sum) is reidkit's ``out_norm``.
* ``"osnet_ain"``, ``torchreid/models/osnet_ain.py``: ``osnet_ain_x1_0`` .. ``osnet_ain_x0_25``.
  Transitions are separate modules ``pool2`` / ``pool3``; stream t is ``conv2.{t}.layers``; in
  an ``OSBlockINin`` the ``IN`` takes the place of ``conv3``'s BN, reidkit's ``expand.1``.
* ``"resnet"``, ``torchreid/models/resnet.py``: ``resnet50``. Module names are torchvision's,
  as in reidkit's backbone. torchreid's ResNet-50 has last stride 2 and no embedding layer: its
  test-time feature is the pooled 2048-d vector (reidkit: ``last_stride=2, head="pool"``).

In every layout conv1, conv5 and the head map the same way: ``conv1.conv`` / ``conv1.bn`` (a BN,
or an affine IN in the IBN/AIN variants) -> ``backbone.stem.0.0`` / ``.1``; ``fc.0`` (Linear) and
``fc.1`` (BatchNorm1d) -> ``head.embed.0`` / ``.1``, reidkit's FC-BN-ReLU head, whose output is
torchreid's test-time feature; ``classifier`` -> ``head.classifier``.

The key names and shapes of torchreid's published modules are checked against this table by
``tests/models/test_torchreid_weights.py`` (reference list in ``tests/models/data/``).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

# reidkit model name -> torchreid layout. The names are the same in both libraries.
ARCH_LAYOUTS = {
    "osnet_x1_0": "osnet",
    "osnet_x0_75": "osnet",
    "osnet_x0_5": "osnet",
    "osnet_x0_25": "osnet",
    "osnet_ibn_x1_0": "osnet",
    "osnet_ain_x1_0": "osnet_ain",
    "osnet_ain_x0_75": "osnet_ain",
    "osnet_ain_x0_5": "osnet_ain",
    "osnet_ain_x0_25": "osnet_ain",
    "resnet50": "resnet",
}

# OSNet's conv1 width (64 * width multiplier) -> the name suffix of that width.
_OSNET_WIDTHS = {64: "x1_0", 48: "x0_75", 32: "x0_5", 16: "x0_25"}
_RESNET50_BLOCKS = (3, 4, 6, 3)


def _conv_unit(src: str, dst: str) -> dict[str, str]:
    """torchreid ``ConvLayer`` / ``Conv1x1`` / ``Conv1x1Linear`` (``.conv``, ``.bn``) -> reidkit
    ``_conv_bn`` (``.0`` conv, ``.1`` norm)."""
    return {f"{src}.conv": f"{dst}.0", f"{src}.bn": f"{dst}.1"}


def _lite_conv(src: str, dst: str) -> dict[str, str]:
    """torchreid ``LightConv3x3`` -> reidkit ``LiteConv3x3``."""
    return {
        f"{src}.conv1": f"{dst}.pointwise",
        f"{src}.conv2": f"{dst}.depthwise",
        f"{src}.bn": f"{dst}.bn",
    }


def _stream_layer(layout: str, block: str, t: int, i: int) -> str:
    """torchreid path of Lite 3x3 layer ``i`` of stream ``t`` (both 0-based) of ``block``."""
    if layout == "osnet_ain":
        return f"{block}.conv2.{t}.layers.{i}"
    return f"{block}.conv2{'abcd'[t]}" + ("" if t == 0 else f".{i}")


def _os_block(layout: str, src: str, dst: str) -> dict[str, str]:
    """Every module of one torchreid OSBlock at ``src`` -> reidkit :class:`OSBlock` at ``dst``."""
    table = {
        **_conv_unit(f"{src}.conv1", f"{dst}.reduce"),
        f"{src}.gate.fc1": f"{dst}.gate.fc1",
        f"{src}.gate.fc2": f"{dst}.gate.fc2",
        **_conv_unit(f"{src}.conv3", f"{dst}.expand"),
        **_conv_unit(f"{src}.downsample", f"{dst}.shortcut"),
        # OSNet-IBN: IN after the residual sum; OSNet-AIN (OSBlockINin): IN instead of conv3's BN.
        f"{src}.IN": f"{dst}.out_norm" if layout == "osnet" else f"{dst}.expand.1",
    }
    for t in range(4):  # torchreid's T = 4 streams; stream t stacks t + 1 layers
        for i in range(t + 1):
            table.update(_lite_conv(_stream_layer(layout, src, t, i), f"{dst}.streams.{t}.{i}"))
    return table


def _osnet_table(layout: str) -> dict[str, str]:
    """torchreid module path -> reidkit module path for an OSNet layout (2 blocks per stage)."""
    trans2, trans3 = ("conv2.2.0", "conv3.2.0") if layout == "osnet" else ("pool2.0", "pool3.0")
    table = {
        **_conv_unit("conv1", "backbone.stem.0"),
        **_conv_unit(trans2, "backbone.conv3.0.0"),
        **_conv_unit(trans3, "backbone.conv4.0.0"),
        **_conv_unit("conv5", "backbone.conv5"),
        "fc.0": "head.embed.0",
        "fc.1": "head.embed.1",
        "classifier": "head.classifier",
    }
    for stage, offset in (("conv2", 0), ("conv3", 1), ("conv4", 1)):
        for j in range(2):
            table.update(_os_block(layout, f"{stage}.{j}", f"backbone.{stage}.{j + offset}"))
    return table


def _resnet_table() -> dict[str, str]:
    """torchreid ResNet-50 module path -> reidkit: the same name under ``backbone.``."""
    names = ["conv1", "bn1"]
    for stage, blocks in enumerate(_RESNET50_BLOCKS, start=1):
        for j in range(blocks):
            names += [f"layer{stage}.{j}.{m}" for m in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
        names += [f"layer{stage}.0.downsample.0", f"layer{stage}.0.downsample.1"]
    return {**{n: f"backbone.{n}" for n in names}, "classifier": "head.classifier"}


MODULE_MAPS: dict[str, dict[str, str]] = {
    "osnet": _osnet_table("osnet"),
    "osnet_ain": _osnet_table("osnet_ain"),
    "resnet": _resnet_table(),
}
"""Per layout: torchreid module path -> reidkit module path (in a :class:`ReIDModel`)."""


def identify(state: Mapping[str, Tensor]) -> tuple[str, str] | None:
    """Recognise a torchreid state dict by its key names.

    Args:
        state: a state dict, ``module.`` prefixes already removed.

    Returns:
        ``(layout, arch)``, e.g. ``("osnet_ain", "osnet_ain_x0_25")``, or ``None`` when the keys
        are not torchreid's. ``arch`` is torchreid's model name for the file's width and
        normalisation (``"osnet_ibn_x1_0"`` when conv1 and the conv2 blocks hold IN); a ResNet-50
        counts as torchreid's only when it carries torchreid's ``classifier`` (otherwise its keys
        are torchvision's and reidkit's own, and it loads as such).
    """
    if "pool2.0.conv.weight" in state and "conv2.0.conv2.0.layers.0.conv1.weight" in state:
        return "osnet_ain", f"osnet_ain_{_osnet_width(state)}"
    if "conv2.0.conv2a.conv1.weight" in state:
        ibn = "conv2.0.IN.weight" in state
        return "osnet", f"osnet{'_ibn' if ibn else ''}_{_osnet_width(state)}"
    if "layer4.2.conv3.weight" in state and "classifier.weight" in state and "fc.weight" not in state:
        return "resnet", "resnet50"
    return None


def _osnet_width(state: Mapping[str, Tensor]) -> str:
    conv1 = state.get("conv1.conv.weight")
    width = None if conv1 is None else int(conv1.shape[0])
    return _OSNET_WIDTHS.get(width, f"width{width}")


def to_reidkit(state: Mapping[str, Tensor], layout: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Rename a torchreid state dict's keys to a reidkit :class:`ReIDModel`'s.

    Args:
        state: torchreid keys (``module.`` prefixes removed).
        layout: a key of :data:`MODULE_MAPS`.

    Returns:
        ``(renamed, origin)``: the state dict under reidkit keys (``backbone.*``, ``head.*``) and,
        for each new key, the file's key. A key the table does not know keeps its name.
    """
    table = MODULE_MAPS[layout]
    renamed, origin = {}, {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        new = f"{table[module]}.{tensor}" if module in table else key
        renamed[new] = value
        origin[new] = key
    return renamed, origin


def to_torchreid(model: nn.Module, layout: str) -> dict[str, Tensor]:
    """The state dict of a reidkit ``model`` under torchreid's keys (the inverse of
    :func:`to_reidkit`), e.g. to write a checkpoint torchreid's ``load_pretrained_weights`` reads.

    Where two torchreid modules map to one reidkit module (``expand.1`` is ``conv3.bn`` in an
    OSNet-AIN ``OSBlock`` and ``IN`` in an ``OSBlockINin``), the reidkit module's type decides.

    Raises:
        KeyError: a tensor of ``model`` that torchreid's layout has no place for.
    """
    inverse: dict[str, list[str]] = {}
    for src, dst in MODULE_MAPS[layout].items():
        inverse.setdefault(dst, []).append(src)
    modules = dict(model.named_modules())
    out = {}
    for key, value in model.state_dict().items():
        module, _, tensor = key.rpartition(".")
        sources = inverse.get(module)
        if not sources:
            raise KeyError(f"{key!r} has no place in torchreid's {layout!r} layout")
        if len(sources) > 1:
            is_in = isinstance(modules[module], nn.InstanceNorm2d)
            sources = [s for s in sources if s.endswith(".IN") == is_in]
        out[f"{sources[0]}.{tensor}"] = value
    return out
