"""What every subcommand shares: one-line argument errors, typed arguments, the model source
(``--checkpoint`` or ``--model [--pretrained]``), config overrides (``--set``), dataset options
(``--dataset-option``), the evaluation dataset and the device.

One meaning per flag across subcommands: ``--set section.key=value`` always overrides the run
config (``eval.metric=cosine``, ``data.skip_unreadable=true``); ``--dataset-option key=value``
always passes an option to the dataset builder (``split_id=3``, ``pattern=...``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class UsageError(ValueError):
    """Command-line arguments that do not go together; the message names the flags."""


class Parser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line (no usage dump): ``reidkit X: error: ...``."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


# ---------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def key_value(text: str) -> tuple[str, str]:
    """argparse type: ``key=value`` with a non-empty key."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected key=value")
    return key.strip(), value


def name_pattern(text: str) -> re.Pattern:
    """argparse type: a regular expression with a named group ``pid`` (``camid`` optional)."""
    try:
        regex = re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular expression ({err})") from None
    if "pid" not in regex.groupindex:
        raise argparse.ArgumentTypeError(f"{text!r} has no named group (?P<pid>...)")
    return regex


def output_file(*extensions: str):
    """argparse type factory: a path whose extension is one of ``extensions``."""

    def check(text: str) -> str:
        if Path(text).suffix.lower() not in extensions:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a file ending in {' or '.join(extensions)}")
        return text

    return check


# ---------------------------------------------------------------------------- shared flags
def add_config_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value (e.g. eval.metric=cosine, data.skip_unreadable=true)",
    )


def add_model_args(p: argparse.ArgumentParser, extraction: bool = True) -> None:
    """``--checkpoint`` | ``--model [--pretrained]`` | ``--model FILE.onnx [--input-size H W
    --mean R G B --std R G B --bgr]``, ``--device``, ``--set`` and, for commands that embed
    images, ``--flip`` and ``--backend``."""
    p.add_argument("--checkpoint", help="a reidkit checkpoint (last.pt of a run)")
    p.add_argument("--model", help="a registered model (reidkit models), or an .onnx file run by onnxruntime")
    p.add_argument("--pretrained", help="with --model: a local weights file (e.g. a torchreid model-zoo file)")
    p.add_argument(
        "--non-strict", action="store_true",
        help="with --pretrained: load the tensors that fit and warn about the rest (default: every backbone tensor must load)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    onnx = p.add_argument_group("ONNX files without reidkit metadata (third-party exports)")
    onnx.add_argument("--input-size", nargs=2, type=positive_int, metavar=("H", "W"), help="input height and width in pixels")
    onnx.add_argument("--mean", nargs=3, type=float, metavar=("C1", "C2", "C3"), help="per-channel mean in [0, 1] pixel units")
    onnx.add_argument("--std", nargs=3, type=float, metavar=("C1", "C2", "C3"), help="per-channel std in [0, 1] pixel units")
    onnx.add_argument("--bgr", action="store_true", default=None, help="the network takes BGR input")
    add_config_overrides(p)
    if extraction:
        p.add_argument("--flip", action="store_true", help="flip test-time augmentation (same as --set eval.flip=true)")
        p.add_argument(
            "--backend", choices=("auto", "torch", "onnxruntime"),
            help="inference backend (default auto: onnxruntime on CPU when installed and equal to torch)",
        )


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="registered dataset (default: the checkpoint's evaluation dataset)")
    p.add_argument("--root", help="dataset folder")
    p.add_argument(
        "--dataset-option", action="append", default=[], type=key_value, metavar="KEY=VALUE",
        help="option of the dataset builder (e.g. split_id=3, num_test_ids=486, pattern=...)",
    )


def add_ranking_args(p: argparse.ArgumentParser) -> None:
    """``--rerank`` and ``--aqe`` (shortcuts for ``--set eval.rerank={}`` / ``eval.aqe={}``)."""
    p.add_argument(
        "--rerank", action="store_true",
        help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3; change with --set eval.rerank.k1=...)",
    )
    p.add_argument("--aqe", action="store_true", help="alpha query expansion (k=10, alpha=3; --set eval.aqe.k=...)")


# ---------------------------------------------------------------------------- loading
def _model_kwargs(overrides: list[str]) -> dict:
    """``model.kwargs`` of the ``--set`` overrides (``--set model.kwargs.last_stride=2``).

    Raises:
        ConfigError: a malformed override, or ``model.kwargs`` that is not a mapping.
    """
    from ..engine.config import ConfigError, apply_overrides

    mine = [o for o in overrides if o.partition("=")[0].strip().startswith("model.kwargs")]
    kwargs = apply_overrides({"model": {"kwargs": {}}}, mine)["model"]["kwargs"]
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--set model.kwargs={kwargs!r}: expected a mapping such as model.kwargs.last_stride=2")
    return kwargs


def load_model_and_config(args):
    """Model (eval mode) and validated :class:`~reidkit.engine.config.Config` from the flags.

    Raises:
        UsageError: neither or both of ``--checkpoint`` / ``--model``, or ``--pretrained``
            without ``--model``.
        CheckpointError, ConfigError, KeyError, ValueError: from loading (one-line messages).
    """
    from ..engine.checkpoint import model_from_checkpoint
    from ..engine.config import ConfigError, apply_overrides, config_from_dict, validate_config
    from ..models import WeightsFile, create_model

    if args.checkpoint and args.model:
        raise UsageError("give either --checkpoint (a trained run) or --model (a registered model), not both")
    if args.pretrained and not args.model:
        raise UsageError("--pretrained goes with --model; a --checkpoint carries its own weights")
    onnx_flags = [f"--{k.replace('_', '-')}" for k in ("input_size", "mean", "std", "bgr") if getattr(args, k, None)]
    is_onnx = bool(args.model) and args.model.lower().endswith(".onnx")
    if onnx_flags and not is_onnx:
        raise UsageError(f"{', '.join(onnx_flags)} describe an --model FILE.onnx; reidkit models know their input")
    if is_onnx:
        if args.pretrained:
            raise UsageError("--pretrained goes with a registered --model, not with an .onnx file (it holds its weights)")
        from ..inference import load_onnx_model

        model = load_onnx_model(args.model, input_size=args.input_size, mean=args.mean, std=args.std, bgr=args.bgr)
        height, width = model.input_size
        cfg_dict = {"model": {"name": model.name}, "data": {"height": height, "width": width}}
        source = f"--model {args.model!r}"
    elif args.checkpoint:
        model, ckpt = model_from_checkpoint(args.checkpoint)
        cfg_dict, source = dict(ckpt.get("config") or {}), f"checkpoint {args.checkpoint!r}"
    elif args.model:
        weights = args.pretrained
        if weights and getattr(args, "non_strict", False):
            weights = WeightsFile(weights, strict=False)
        kwargs = _model_kwargs(getattr(args, "set", []))  # --set model.kwargs.last_stride=2 builds that model
        torch.manual_seed(0)  # what --pretrained leaves untrained is the same in every command
        try:
            model = create_model(args.model, num_classes=0, pretrained=weights, **kwargs).eval()
        except TypeError as err:
            raise ConfigError(f"--set model.kwargs of {args.model!r}: {err}") from None
        cfg_dict, source = {"model": {"name": args.model, "kwargs": kwargs}}, "--model"
    else:
        raise UsageError("give --checkpoint CKPT, or --model NAME [--pretrained FILE]")
    try:
        overrides = shortcut_overrides(args) + list(getattr(args, "set", []))
        cfg = validate_config(config_from_dict(apply_overrides(cfg_dict, overrides)))
    except ConfigError as err:
        raise ConfigError(f"{source} / --set: {err}") from None
    return model, cfg


def shortcut_overrides(args) -> list[str]:
    """``--set`` items the shortcut flags stand for (applied before the user's own ``--set``,
    so ``--rerank --set eval.rerank.k1=30`` works)."""
    items = []
    if getattr(args, "flip", False):
        items.append("eval.flip=true")
    if getattr(args, "backend", None):
        items.append(f"eval.backend={args.backend}")
    if getattr(args, "rerank", False):
        items.append("eval.rerank={}")
    if getattr(args, "aqe", False):
        items.append("eval.aqe={}")
    if getattr(args, "single_shot", None):
        items.append(f"eval.single_shot_repeats={args.single_shot}")
    return items


def dataset_options(args) -> dict:
    """``--dataset-option`` values, parsed as YAML scalars (``3`` is an int, ``true`` a bool)."""
    from ..engine.config import ConfigError, parse_yaml

    options = {}
    for key, raw in getattr(args, "dataset_option", []):
        try:
            options[key] = parse_yaml(raw)
        except ConfigError as err:
            raise UsageError(f"--dataset-option {key}={raw}: {err}") from None
    return options


def eval_dataset(args, cfg):
    """The dataset named on the command line, else the config's evaluation dataset.

    With ``data.skip_unreadable`` (``--set data.skip_unreadable=true``) every image is decoded
    once and unreadable ones are dropped with a warning listing them.

    Raises:
        UsageError: ``--model`` without ``--dataset`` (an untrained model knows no dataset).
    """
    from ..data import create_dataset

    if args.model and not args.dataset:
        raise UsageError("--model needs --dataset NAME [--root DIR] to evaluate on (a checkpoint knows its dataset)")
    data = cfg.data
    cfg_name, cfg_root, cfg_opts = (
        (data.eval_name, data.eval_root, data.eval_options) if data.eval_name else (data.name, data.root, data.options)
    )
    name = args.dataset or cfg_name
    root = args.root if args.root is not None else (cfg_root if name == cfg_name else None)
    base = dict(cfg_opts) if name == cfg_name else {}
    dataset = create_dataset(name, root=root, **{**base, **dataset_options(args)})
    if data.skip_unreadable:
        dataset.check_images(skip_unreadable=True)
    return dataset


def device(args):
    from ..engine.runtime import resolve_device

    try:
        return resolve_device(getattr(args, "device", "auto"))
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device {args.device!r}: {err}") from None


def list_images(folder: str, flag: str = "--gallery") -> list[str]:
    """Image files (by extension) under ``folder``, recursively, sorted.

    Raises:
        UsageError: ``folder`` is not a folder or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{flag} {folder!r} is not a folder")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise UsageError(f"{flag} {folder!r} holds no images ({', '.join(IMAGE_EXTS)})")
    return paths


def transform_for(cfg):
    """Test-time transform of a config: resize to ``data.height x data.width``, normalise."""
    from ..data.transforms import TransformConfig, build_transforms

    return build_transforms(TransformConfig(height=cfg.data.height, width=cfg.data.width), train=False)


def readable_images(paths: list[str], skip: bool, what: str, load_image=None) -> list[str]:
    """``paths`` whose images decode. An unreadable one raises (its path in the message), or,
    when ``skip`` (``data.skip_unreadable``), is dropped with one warning listing them all.

    Raises:
        ImageReadError: an image does not decode and ``skip`` is off.
        UsageError: ``skip`` left no image.
    """
    import warnings

    from ..data import ImageReadError, read_image

    load = load_image or read_image
    good, bad = [], []
    for path in paths:
        try:
            load(path)
            good.append(path)
        except ImageReadError as err:
            if not skip:
                raise
            bad.append(err.path)
    if bad:
        warnings.warn(f"{what}: skipping {len(bad)} unreadable image(s): {', '.join(bad)}", stacklevel=2)
    if not good:
        raise UsageError(f"{what}: no readable image left")
    return good
