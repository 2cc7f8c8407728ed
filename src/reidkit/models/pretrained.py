"""Loading weights files into reidkit models: one loader, strict by default, never running code.

A weights file is read with ``torch.load(weights_only=True)``, which refuses a pickle that would
construct Python objects before anything in it runs. NumPy scalars are the one exception allowed
(torchreid's training checkpoints store ``rank1`` as one); nothing else is.

Accepted wrappings: a plain state dict; a checkpoint dict with a ``"state_dict"`` entry
(torchreid's ``save_checkpoint``) or a ``"model"`` entry (reidkit's own checkpoints); keys with
``module.`` prefixes (DataParallel). Accepted layouts: reidkit's (a whole :class:`ReIDModel`, or a
bare backbone, with or without a ``backbone.`` prefix), torchvision's backbone names, and
torchreid's, recognised by key names and renamed by :mod:`reidkit.models.torchreid`.

What must fit (strict, the default): every backbone tensor must come from the file, and every
key of the file must fit somewhere with the same shape. The head is new when the file has none of
its tensors (e.g. an ImageNet backbone), and must be complete when the file has any. A
classifier (``classifier.*``, ``head.classifier.*``, torchvision's ``fc``) that the model lacks
or that has another number of classes is skipped silently: zoo files carry an ImageNet or
training-set classifier. ``strict=False`` loads what fits and warns with the lists.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import nn

from . import torchreid
from .base import ReIDModel

_WRAPPER_KEYS = ("state_dict", "model")  # torchreid / Lightning, reidkit checkpoints
_CLASSIFIER = re.compile(r"^(head\.)?classifier(\.\d+)?\.(weight|bias)$|^fc\.(weight|bias)$")
_SHOWN = 6  # keys shown per list in a message


class WeightsError(ValueError):
    """A weights file is missing, unreadable, unsafe or does not fit the model; names it."""


class WeightsFileNotFoundError(WeightsError, FileNotFoundError):
    """The weights file does not exist (also a :class:`FileNotFoundError`)."""


class WeightsFile(os.PathLike):
    """A weights file path with a loading option; accepted wherever ``pretrained=PATH`` is.

    ``create_model("osnet_x1_0", pretrained=WeightsFile("x.pth", strict=False))`` loads the
    tensors that fit and warns about the rest instead of raising.

    Args:
        path: the file.
        strict: raise :class:`WeightsError` when anything does not fit (default).
    """

    def __init__(self, path: str | os.PathLike, strict: bool = True):
        self.path = os.fspath(path)
        self.strict = strict

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"WeightsFile({self.path!r}, strict={self.strict})"


class LoadReport(NamedTuple):
    """What a load did, by reidkit key (``unexpected`` by the file's own key).

    Attributes:
        source: ``"reidkit"`` or ``"torchreid <arch>"``, the layout the file was read as.
        loaded: the module's keys filled from the file.
        missing: required keys of the module the file did not provide.
        unexpected: keys of the file that fit nowhere.
        mismatched: ``"key file-shape vs model-shape"`` entries.
        ignored: keys of the file skipped on purpose (a classifier of another size, a head when
            only a backbone is loaded).
    """

    source: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]
    ignored: list[str]


# --- reading -------------------------------------------------------------------------------------


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file safely and unwrap it to a flat state dict.

    Args:
        path: a ``torch.save`` file (``.pth``, ``.pt``, ``.pth.tar``).

    Returns:
        ``{key: tensor}`` with ``module.`` prefixes removed.

    Raises:
        WeightsFileNotFoundError: ``path`` does not exist.
        WeightsError: not a regular file, not a torch file, holds pickled Python objects (never
            executed), or holds no state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        if not os.path.exists(path):
            raise WeightsFileNotFoundError(f"weights file {path!r} does not exist")
        raise WeightsError(f"weights file {path!r} is not a regular file")
    return _unwrap(_safe_load(path), path)


def _safe_load(path: str):
    """``torch.load(weights_only=True)``, allowing NumPy scalars and nothing else.

    torch's warning about a pickle protocol above 2 (a file written by ``pickle.dump``) is
    silenced: such a file is refused with one :class:`WeightsError` line instead.
    """
    allowed: list = []
    while True:
        try:
            with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            name = _refused_global(err)
            extra = _numpy_scalar_global(name) if name else None
            if extra is None or extra in allowed:
                raise WeightsError(_refusal(path, err, name)) from None
            allowed.append(extra)
        except Exception as err:  # torch raises several types for corrupt or foreign files
            raise WeightsError(
                f"weights file {path!r} is not a torch weights file ({_reason(err)})"
            ) from None


def _refused_global(err: Exception) -> str | None:
    """The Python global torch's weights-only unpickler refused, read from its message."""
    match = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(err))
    return (match.group(1) or match.group(2)) if match else None


def _numpy_scalar_global(name: str):
    """The NumPy object ``name`` refers to, if it is one that only builds scalars and dtypes."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    fixed = {
        "numpy.dtype": np.dtype,
        "numpy.core.multiarray.scalar": core.multiarray.scalar,
        "numpy._core.multiarray.scalar": core.multiarray.scalar,
    }
    if name in fixed:
        return fixed[name]
    prefix = "numpy.dtypes."
    if name.startswith(prefix) and name.endswith("DType") and hasattr(np, "dtypes"):
        return getattr(np.dtypes, name[len(prefix):], None)
    return None


def _refusal(path: str, err: Exception, name: str | None) -> str:
    text = str(err)
    if name is None and ("Weights only load failed" not in text or "Unsupported operand" in text):
        if "Unsupported operand" not in text:
            reason = _reason(err)
        elif _is_pickle(path):  # e.g. pickle.dump's protocol 4/5 frames, which torch never writes
            reason = "a plain pickle, not written by torch.save: the weights-only loader refuses it, nothing in it runs"
        else:
            reason = "bytes that are not a pickle opcode"
        return f"weights file {path!r} is not a torch weights file ({reason})"
    what = f" ({name})" if name else ""
    return (
        f"weights file {path!r} is not a plain tensor file (torch.load(weights_only=True) refused "
        f"it: it holds pickled Python objects{what}, which reidkit never executes)"
    )


def _is_pickle(path: str, max_opcodes: int = 1_000_000) -> bool:
    """Whether ``path`` parses as a pickle stream, read with :func:`pickletools.genops`, which
    decodes opcodes and never builds an object (so nothing in the file runs)."""
    try:
        with open(path, "rb") as handle:
            for count, (opcode, _, _) in enumerate(pickletools.genops(handle)):
                if opcode.name == "STOP" or count >= max_opcodes:
                    return True
    except Exception:  # genops raises ValueError for an unknown opcode, others for truncation
        return False
    return False


def _reason(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


def _unwrap(obj, path: str) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded file, with ``module.`` prefixes removed."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"weights file {path!r} holds {_describe(obj)}, not a state dict")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise WeightsError(
            f"weights file {path!r} is not a state dict: entries {_listing(bad)} are not tensors "
            f"(expected {{name: tensor}}, or a checkpoint with a 'state_dict' or 'model' entry)"
        )
    return {_strip_module(k): v for k, v in obj.items()}


def _describe(obj) -> str:
    return "an empty dict" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


# --- fitting -------------------------------------------------------------------------------------


def load_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    where: str,
    strict: bool = True,
    arch: str | None = None,
) -> LoadReport:
    """Load a state dict (see the module docstring for what must fit) into ``module``.

    Args:
        module: a :class:`ReIDModel` (backbone and head are loaded) or a bare backbone (a file's
            head is then ignored).
        state: from :func:`read_weights`.
        where: the file, for messages.
        strict: raise on anything that does not fit; ``False`` loads what fits and warns.
        arch: the registered model name, when known; a torchreid file of another architecture
            is then named in the error.

    Returns:
        A :class:`LoadReport`.

    Raises:
        WeightsError: nothing fits (even with ``strict=False``), or, when strict, missing backbone
            (or partial head) tensors, keys that fit nowhere or shapes that differ. The message is
            one line and lists the keys.
    """
    source, origin = "reidkit", {k: k for k in state}
    found = torchreid.identify(state)
    if found is not None:
        state, origin = torchreid.to_reidkit(state, found[0])
        source = f"torchreid {found[1]}"
    own = module.state_dict()
    usable, report = _fit(module, own, state, origin, source)
    target = arch or type(module).__name__
    problems = _problems(report, arch, found)
    if all(k.endswith("num_batches_tracked") for k in usable):
        raise WeightsError(
            f"weights file {where!r} ({source} layout): none of its {len(state)} tensors fits "
            f"{target} by name and shape (file keys e.g. {_listing(list(origin.values()), 3)}; "
            f"model keys e.g. {_listing(list(own), 3)})"
        )
    if problems and strict:
        raise WeightsError(
            f"weights file {where!r} ({source} layout) does not fit {target}: {'; '.join(problems)} "
            "(strict=False loads the tensors that fit)"
        )
    if problems:
        warnings.warn(
            f"weights file {where!r} ({source} layout) loaded into {target} with strict=False, "
            f"{len(report.loaded)} tensors loaded: {'; '.join(problems)}",
            stacklevel=3,
        )
    module.load_state_dict(usable, strict=False)
    return report


def _fit(module, own, state, origin, source) -> tuple[dict, LoadReport]:
    """Match the file's keys to ``own`` and sort them into the report's lists."""
    is_model = isinstance(module, ReIDModel)
    usable, unexpected, mismatched, ignored = {}, [], [], []
    for key, value in state.items():
        name = _own_name(key, own, is_model)
        classifier = _CLASSIFIER.match(name.removeprefix("backbone.")) is not None
        if name in own and tuple(own[name].shape) == tuple(value.shape):
            usable[name] = value
        elif classifier or (not is_model and name.startswith("head.")):
            ignored.append(origin[key])
        elif name in own:
            mismatched.append(f"{name} {tuple(value.shape)} vs {tuple(own[name].shape)}")
        else:
            unexpected.append(origin[key])
    missing = [k for k in _required(own, usable, is_model) if k not in usable]
    report = LoadReport(source, list(usable), missing, unexpected, mismatched, ignored)
    return usable, report


def _own_name(key: str, own: Mapping, is_model: bool) -> str:
    """The module key a file key stands for: as is, under ``backbone.``, or without a wrapper."""
    candidates = [key]
    if is_model:
        candidates.append(f"backbone.{key}")
    stripped = key
    while stripped.startswith(("backbone.", "model.")) and stripped not in own:
        stripped = stripped.split(".", 1)[1]
        candidates.append(stripped)
    return next((k for k in candidates if k in own), stripped if not is_model else key)


def _required(own: Mapping, usable: Mapping, is_model: bool) -> list[str]:
    """Backbone keys always; head keys (but the classifier) when the file gave any of them."""
    keys = [k for k in own if not k.endswith("num_batches_tracked")]
    if not is_model:
        return keys
    backbone = [k for k in keys if k.startswith("backbone.")]
    head = [k for k in keys if k.startswith("head.") and not _CLASSIFIER.match(k)]
    return backbone + (head if any(k in usable for k in head) else [])


def _problems(report: LoadReport, arch: str | None, found: tuple[str, str] | None) -> list[str]:
    problems = []
    if arch is not None and found is not None and found[1] != arch:
        problems.append(f"it is a checkpoint of torchreid's {found[1]}, not {arch}")
    for label, keys in (
        ("model tensors missing from the file", report.missing),
        ("file keys that fit nowhere", report.unexpected),
        ("shapes that differ (file vs model)", report.mismatched),
    ):
        if keys:
            problems.append(f"{len(keys)} {label}: {_listing(keys)}")
    return problems


def _listing(keys: list[str], limit: int = _SHOWN) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# --- entry points --------------------------------------------------------------------------------


def load_state_dict_file(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool | None = None,
    arch: str | None = None,
) -> LoadReport:
    """Read a weights file (:func:`read_weights`) and load it (:func:`load_state`).

    Args:
        module: a :class:`ReIDModel` or a bare backbone.
        path: the file, or a :class:`WeightsFile` (which carries ``strict``).
        strict: overrides the :class:`WeightsFile`'s setting; ``None`` means its, or ``True``.
        arch: the registered model name, for messages and the torchreid architecture check.

    Raises:
        WeightsFileNotFoundError: ``path`` does not exist.
        WeightsError: see :func:`read_weights` and :func:`load_state`.
    """
    if strict is None:
        strict = getattr(path, "strict", True)
    state = read_weights(path)
    return load_state(module, state, where=os.fspath(path), strict=strict, arch=arch)


def is_weights_path(pretrained) -> bool:
    """``pretrained`` names a file (``str``, path-like or :class:`WeightsFile`), not None/bool."""
    return isinstance(pretrained, (str, os.PathLike))


def load_pretrained(
    module: nn.Module,
    pretrained: bool | str | os.PathLike | None,
    torchvision_state: Callable[[], dict[str, torch.Tensor]] | None = None,
    *,
    arch: str | None = None,
) -> LoadReport | None:
    """Initialise ``module`` from ``pretrained``.

    Args:
        module: a :class:`ReIDModel` or a bare backbone.
        pretrained: ``None``/``False`` (nothing), a path or :class:`WeightsFile` (see
            :func:`load_state_dict_file`), or ``True`` (call ``torchvision_state()``, which
            fetches torchvision's ImageNet weights; that needs internet or a populated torch hub
            cache).
        torchvision_state: returns the torchvision state dict with keys matching ``module``;
            ``None`` when no such source exists.
        arch: the registered model name (messages, torchreid architecture check).

    Returns:
        The :class:`LoadReport` of a file load, else ``None``.

    Raises:
        ValueError: ``pretrained=True`` but the model has no torchvision weights.
        WeightsError: ``pretrained`` is of another type, or the file cannot be read or does not
            fit (:class:`WeightsFileNotFoundError` when it does not exist).
    """
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True:
        if torchvision_state is None:
            raise ValueError(
                f"{type(module).__name__} has no downloadable ImageNet weights; "
                "pass pretrained=<path to a local state dict>"
            )
        state = torchvision_state()
        module.load_state_dict(state, strict=False)
        return None
    if not is_weights_path(pretrained):
        raise WeightsError(f"pretrained must be None, True or a file path, got {pretrained!r}")
    return load_state_dict_file(module, pretrained, arch=arch)
