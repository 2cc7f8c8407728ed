"""Run configuration: YAML into dataclasses, strictly.

A config file has the sections of :class:`Config`. Unknown keys and wrong types are errors that
name the key and list the valid ones. ``--set section.key=value`` overrides are parsed as YAML
values (``--set optim.lr=1e-3``, ``--set data.options.split_id=3``). Relative paths in the config
(dataset roots, pretrained weights) are resolved against the current working directory.
There is no config inheritance: one file per recipe.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a float, as YAML 1.2 and users expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str):
    """YAML text to Python values (safe loading; ``1e-3`` is a float)."""
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and what was expected."""


@dataclass
class DataConfig:
    """Datasets, input size, augmentation and PK batch composition.

    Attributes:
        name: training dataset (``reidkit datasets`` lists them).
        root: its folder.
        options: extra keyword options of the dataset builder (e.g. ``split_id``).
        eval_name: dataset to evaluate on; ``None`` evaluates on ``name``'s query/gallery.
        eval_root: folder of ``eval_name``.
        eval_options: options of ``eval_name``.
        height: input height in pixels.
        width: input width in pixels.
        flip_p: horizontal flip probability.
        pad: padding in pixels before random crop (0 disables).
        random_erasing_p: random erasing probability (0 disables).
        color_jitter: brightness/contrast/saturation jitter (0 disables).
        resize: ``[H, W]`` to resize to before a random crop to ``height x width`` (centre crop at
            test time), as MSP-CNN's 160x64 -> 144x56; ``None`` resizes straight to the input size.
        sampler: ``"pk"`` (P identities x K images, Hermans et al. 2017) or ``"pairs"``
            (Siamese pairs with ``neg_pos_ratio`` negatives per positive, MSP-CNN).
        num_pids_per_batch: P of the PK sampler.
        num_instances: K of the PK sampler.
        batch_size: images per batch of the ``pairs`` sampler (``None``: P x K).
        neg_pos_ratio: negative pairs per positive pair of the ``pairs`` sampler.
        num_workers: data-loading processes (``None``: automatic).
        eval_batch_size: images per batch at feature extraction.
        skip_unreadable: decode every image once before training and drop unreadable ones with
            a warning that lists them (otherwise the first unreadable image stops the run with
            an error naming it).
    """

    name: str = "synthetic"
    root: str | None = None
    options: dict = field(default_factory=dict)
    eval_name: str | None = None
    eval_root: str | None = None
    eval_options: dict = field(default_factory=dict)
    height: int = 256
    width: int = 128
    flip_p: float = 0.5
    pad: int = 10
    random_erasing_p: float = 0.5
    color_jitter: float = 0.0
    resize: list | None = None
    sampler: str = "pk"
    num_pids_per_batch: int = 16
    num_instances: int = 4
    batch_size: int | None = None
    neg_pos_ratio: float = 2.0
    num_workers: int | None = None
    eval_batch_size: int = 128
    skip_unreadable: bool = False


@dataclass
class ModelConfig:
    """Model name (``reidkit models`` lists them), pretrained weights and constructor kwargs.

    ``init_seed`` seeds the model's random initialisation (``None``: the run's ``seed``).
    """

    name: str = "mobilenet_v2"
    pretrained: str | bool | None = None
    kwargs: dict = field(default_factory=dict)
    init_seed: int | None = None


@dataclass
class MutualConfig:
    """Mutual learning: train ``peers`` together (none: a single model, ``model``).

    Attributes:
        peers: model sections (``name``, ``pretrained``, ``kwargs``, ``init_seed``) of the peers.
            A peer without ``init_seed`` gets ``seed + its index``.
        dml_weight: weight of deep mutual learning, ``KL(p_other || p_self)`` on class
            probabilities (Zhang et al., CVPR 2018).
        metric_weight: weight of metric mutual learning, ``mean((D_self - sg(D_other))^2)`` on the
            batch distance matrices (AlignedReID, Zhang et al. 2017).
    """

    peers: list = field(default_factory=list)
    dml_weight: float = 1.0
    metric_weight: float = 0.0


@dataclass
class MSGRConfig:
    """Multi-scale gradient regulariser (AMSFL, seed 000): ``loss + weight * sum ||dL/dh||``.

    Attributes:
        weight: lambda (paper 1e-2); 0 disables it.
        stages: 1-based indices of the backbone stage outputs h penalised (paper: 1 and 2).
        include_input: also penalise the gradient w.r.t. the input image.
        norm: ``"l2"``, ``"l1"`` or ``"linf"`` norm of the gradient.
    """

    weight: float = 0.0
    stages: list = field(default_factory=lambda: [1, 2])
    include_input: bool = False
    norm: str = "l2"


@dataclass
class OptimConfig:
    """Optimiser: ``adam``, ``amsgrad`` or ``sgd``; learning rate and weight decay."""

    name: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9


@dataclass
class SchedConfig:
    """Learning-rate schedule per epoch: linear warmup then ``step`` (x gamma at each milestone)
    or ``cosine`` (to 0 at ``train.max_epochs``) or ``constant``.

    ``by_time: true`` runs the same schedule against the wall-clock budget instead of epochs:
    after ``t`` of ``train.max_minutes`` the schedule stands at epoch ``t / max_minutes *
    max_epochs`` (set per iteration), so a fixed time budget gets a complete schedule whatever
    the model's speed (used for the CPU-scale ablations)."""

    name: str = "step"
    warmup_epochs: int = 0
    warmup_factor: float = 0.1
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    by_time: bool = False


@dataclass
class TrainConfig:
    """Loop settings.

    Attributes:
        max_epochs: epochs to train.
        max_minutes: wall-clock training budget in minutes (``None``: none); training stops
            after the first iteration past it, then saves and evaluates.
        eval_every: evaluate every N epochs (0: only at the end).
        amp: mixed precision (bfloat16 autocast on CPUs with native bf16, float16 + grad scaler
            on CUDA).
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        iters_per_epoch: cap on iterations per epoch (``None``: one pass of the PK sampler).
    """

    max_epochs: int = 60
    max_minutes: float | None = None
    eval_every: int = 10
    amp: bool = True
    device: str = "auto"
    iters_per_epoch: int | None = None


@dataclass
class EvalConfig:
    """Evaluation: distance ``euclidean`` or ``cosine`` (smaller is closer), feature L2 norm,
    and ``local_weight`` > 0 adds that times the AlignedReID local distance (models with a local
    branch). ``amp`` (bfloat16 autocast on CPU) and ``channels_last`` at feature extraction:
    ``None`` picks what ``benchmarks/bench_models.py`` measured faster on this kind of device."""

    metric: str = "euclidean"
    normalize: bool = True
    max_rank: int = 50
    local_weight: float = 0.0
    amp: bool | None = None
    channels_last: bool | None = None


def _default_loss() -> dict:
    return {"ce": {"weight": 1.0, "label_smoothing": 0.1}, "triplet": {"weight": 1.0, "margin": 0.3}}


@dataclass
class Config:
    """A whole run. ``loss`` maps loss names to their options (``reidkit.losses.build_loss``); an
    option ``start_epoch: N`` turns that loss on from (0-based) epoch N (two-stage schedules)."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: dict = field(default_factory=_default_loss)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    msgr: MSGRConfig = field(default_factory=MSGRConfig)
    mutual: MutualConfig = field(default_factory=MutualConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` converted to ``tp`` (int -> float allowed) or raise :class:`ConfigError`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not of type {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    base = origin or tp
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"{where}: expected {getattr(base, '__name__', base)}, got {value!r}")
    return value


def section_from_dict(cls: type, data: Any, where: str):
    """Build the config dataclass ``cls`` from a mapping; ``where`` names it in errors.

    Raises:
        ConfigError: not a mapping, unknown key or wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise ConfigError(f"unknown key {path!r}; valid keys here: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = section_from_dict(tp, value, path)
        else:
            kwargs[key] = _check_type(value, tp, path)
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    """Build a :class:`Config` from nested mappings.

    Raises:
        ConfigError: unknown key or wrong type (the message names the key).
    """
    return section_from_dict(Config, data or {}, "")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to nested mappings in place.

    Raises:
        ConfigError: an override without ``=`` or that descends into a non-mapping.
    """
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = parse_yaml(raw)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (or the defaults when ``path`` is ``None``) and apply overrides.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: invalid YAML, unknown key or wrong type; the message names the file.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            data = parse_yaml(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from None
    data = apply_overrides(data, overrides or [])
    try:
        return config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{path or '<defaults>'}: {err}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
