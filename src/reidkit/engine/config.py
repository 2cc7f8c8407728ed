"""Run configuration: YAML into dataclasses, strictly.

A config file has the sections of :class:`Config`. Unknown keys and wrong types are errors that
name the key and list the valid ones. ``--set section.key=value`` overrides are parsed as YAML
values (``--set optim.lr=1e-3``, ``--set data.options.split_id=3``). Relative paths in the config
(dataset roots, pretrained weights) are resolved against the current working directory.
There is no config inheritance: one file per recipe.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


MAX_YAML_NODES = 100_000
"""Largest config a YAML document may expand to (nodes, aliases counted at every use)."""


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and what was expected."""


class _Loader(yaml.SafeLoader):
    """SafeLoader for configs: ``1e-3`` (no dot) is a float, as YAML 1.2 and users expect; a
    duplicate key is an error; a document whose aliases expand past :data:`MAX_YAML_NODES`
    nodes (an "alias bomb", a few hundred bytes that expand to gigabytes) is refused before it
    is built."""

    def construct_document(self, node):
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    line = key_node.start_mark.line + 1
                    raise ConfigError(f"duplicate key {key!r} (line {seen[key]} and line {line})")
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_expanded_size(root) -> None:
    """Raise if the node graph, with every alias expanded, has more than MAX_YAML_NODES nodes."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a recursive alias counts once instead of looping
        children = node.value if isinstance(node.value, list) else []
        total = 1
        for child in children:
            total += sum(size(n) for n in child) if isinstance(child, tuple) else size(child)
            if total > MAX_YAML_NODES:
                break
        sizes[id(node)] = total
        return total

    if size(root) > MAX_YAML_NODES:
        raise ConfigError(f"the YAML expands to more than {MAX_YAML_NODES:,} values through aliases (&/*); refused")


def parse_yaml(text: str):
    """YAML text to Python values (safe loading; ``1e-3`` is a float; duplicate keys and alias
    bombs refused).

    Raises:
        ConfigError: invalid YAML, a duplicate key or an alias bomb (the message says which).
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply") from None


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
        sampler: ``"pk"`` (P identities x K images, Hermans et al. 2017), ``"pairs"``
            (Siamese pairs with ``neg_pos_ratio`` negatives per positive, MSP-CNN) or
            ``"random"`` (label-free random batches of ``batch_size``, for PAUL).
        num_pids_per_batch: P of the PK sampler.
        num_instances: K of the PK sampler.
        batch_size: images per batch of the ``pairs`` and ``random`` samplers (``None``: P x K).
        neg_pos_ratio: negative pairs per positive pair of the ``pairs`` sampler.
        num_workers: data-loading processes (``None``: automatic).
        eval_batch_size: images per batch at feature extraction.
        skip_unreadable: decode every image once before training and drop unreadable ones with
            a warning that lists them (otherwise the first unreadable image stops the run with
            an error naming it).
        cache: ``"none"`` (the loader reads and decodes every training image file each epoch) or
            ``"memory"`` (every training image is decoded once, before the first epoch, and kept
            as a ``(3, H, W)`` uint8 tensor; augmentation runs on those tensors, so batches are
            the same as from the files). For datasets that fit in memory (CUHK01, CUHK03,
            Market-1501); see ``cache_max_mb``.
        cache_max_mb: the most memory the decoded training images may take with
            ``cache: memory``, in MiB; a dataset that needs more is refused at start, naming
            this key.
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
    cache: str = "none"
    cache_max_mb: float = 2048.0


@dataclass
class ModelConfig:
    """Model name (``reidkit models`` lists them), pretrained weights and constructor kwargs.

    ``pretrained`` is a local weights file (a torchvision, torchreid model-zoo or reidkit file;
    :mod:`reidkit.models.pretrained`); it must fill every backbone tensor unless
    ``pretrained_strict: false`` (which loads what fits and warns with the lists).
    ``init_seed`` seeds the model's random initialisation (``None``: the run's ``seed``).
    """

    name: str = "mobilenet_v2"
    pretrained: str | bool | None = None
    kwargs: dict = field(default_factory=dict)
    init_seed: int | None = None
    pretrained_strict: bool = True


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
        sync_bn: under torchrun, synchronise batch norm over the processes (N processes x
            batch B then compute what one process does with batch N x B); off: each process
            normalises with its own batch (:mod:`reidkit.engine.distributed`).
        channels_last: train in the NHWC memory layout (models and input batches); the same
            maths, faster convolutions on some CPUs and GPUs (measure:
            ``benchmarks/bench_train.py``).
        compile: compile the models' training forward with ``torch.compile`` (inductor; on CPU
            it needs a C++ compiler). The first steps are slow while it compiles. A machine
            without it is refused at start with one line; not with ``msgr.weight > 0``
            (``torch.compile`` has no double backward).
        threads: intra-op CPU threads of the training process (``torch.set_num_threads``, also
            used by evaluation); ``None``: torch's default (one per physical core). Loader
            workers run single-threaded either way.
        flush_denormal: flush denormal floats (below ~1.2e-38) to zero on CPU
            (``torch.set_flush_denormal``, for the whole process); x86 CPUs compute on
            denormals many times slower, and randomly initialised networks produce them.
        reuse_memory: keep freed memory in the process for the next step's tensors (glibc
            ``mallopt``, for the whole process; :func:`reidkit.engine.speed.reuse_freed_memory`)
            instead of page-faulting fresh pages for every large tensor. No effect off Linux.
    """

    max_epochs: int = 60
    max_minutes: float | None = None
    eval_every: int = 10
    amp: bool = True
    device: str = "auto"
    iters_per_epoch: int | None = None
    sync_bn: bool = False
    channels_last: bool = False
    compile: bool = False
    threads: int | None = None
    flush_denormal: bool = False
    reuse_memory: bool = False


@dataclass
class EvalConfig:
    """Evaluation and feature extraction.

    Attributes:
        metric: ``euclidean``, ``sqeuclidean`` or ``cosine`` distance (smaller is closer).
        normalize: L2-normalise embeddings before the distance.
        max_rank: CMC length.
        local_weight: > 0 adds that times the AlignedReID local distance (models with a local
            branch).
        amp: bfloat16 autocast (CPU with native bf16) / float16 (CUDA) at extraction; ``None``:
            on for CUDA, float32 on CPU (:func:`reidkit.inference.select_backend`).
        channels_last: NHWC layout at extraction; ``None`` goes with ``amp``.
        backend: ``auto`` (onnxruntime on CPU when installed and matching torch, else torch),
            ``torch`` or ``onnxruntime``.
        flip: flip test-time augmentation: mean of the embeddings of the image and its mirror.
        rerank: k-reciprocal re-ranking (Zhong et al., CVPR 2017) with options ``k1`` (20),
            ``k2`` (6), ``lambda_value`` (0.3); ``null``: off. It ranks by its own distance (the
            Jaccard distance mixed with the squared Euclidean one), whatever ``metric`` says.
        aqe: alpha query expansion (Radenovic et al., TPAMI 2018) with options ``k`` (10) and
            ``alpha`` (3.0); ``null``: off. Applied before re-ranking.
        single_shot_repeats: > 0 evaluates single-gallery-shot (one random gallery image per
            identity, this many seeded draws averaged; CUHK01 / CUHK03 classic tables); 0 uses
            the full gallery (Market-1501 rules).
        num_workers: data-loading processes at extraction; ``None``: none on machines with 2 CPUs
            or fewer (decoding between batches leaves every core to the model), else
            ``data.num_workers`` (:func:`reidkit.data.loader.extraction_workers`).
    """

    metric: str = "euclidean"
    normalize: bool = True
    max_rank: int = 50
    local_weight: float = 0.0
    amp: bool | None = None
    channels_last: bool | None = None
    backend: str = "auto"
    flip: bool = False
    rerank: dict | None = None
    aqe: dict | None = None
    single_shot_repeats: int = 0
    num_workers: int | None = None


@dataclass
class MethodConfig:
    """How a run trains: a registered training method (:mod:`reidkit.engine.methods`) and its
    options. ``auto``: ``mutual`` when ``mutual.peers`` is set, else ``supervised``; ``paul`` and
    ``paul_source`` are PAUL's two stages (their options: see those classes)."""

    name: str = "auto"
    options: dict = field(default_factory=dict)


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
    method: MethodConfig = field(default_factory=MethodConfig)

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
        ConfigError: an override without ``=``, with an empty key part, whose value is not valid
            YAML, or that descends into a non-mapping.
    """
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value (e.g. optim.lr=1e-3)")
        try:
            value = parse_yaml(raw)
        except ConfigError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from None
        node = data
        for depth, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # an unset optional section (e.g. eval.rerank: null)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                section = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {item!r}: {section!r} is a value, not a section")
        node[parts[-1]] = value
    return data


def read_config_file(path: str | Path) -> dict:
    """The mapping of a YAML config file.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: not a regular file, not UTF-8, invalid YAML, empty (or only comments), or
            not a mapping at the top level; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} is not a regular file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the config as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror}") from None
    try:
        data = parse_yaml(text)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if data is None:
        raise ConfigError(f"{path}: the config is empty; give at least one section (see configs/ for recipes)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, ...), got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (or the defaults when ``path`` is ``None``), apply overrides and
    validate every value (:func:`validate_config`).

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: see :func:`read_config_file`, :func:`apply_overrides` and
            :func:`validate_config`; the message names the file and the key.
    """
    data = read_config_file(path) if path is not None else {}
    try:
        return validate_config(config_from_dict(apply_overrides(data, overrides or [])))
    except ConfigError as err:
        raise ConfigError(f"{path or '<defaults>'}: {err}") from None


# ---------------------------------------------------------------------------- value checks
def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _rule(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {expected}")


def _check_ints(values, key: str, low: int) -> None:
    _rule(
        isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values),
        key, values, f"a list of integers >= {low}",
    )


MAX_INPUT_SIDE = 2048  # pixels; ReID inputs are 256 x 128 to 384 x 192: larger is a typo that would exhaust memory
MAX_RANK = 100_000  # the CMC length; the curve costs 8 bytes per rank


def _check_data(d: DataConfig) -> None:
    _rule(8 <= d.height <= MAX_INPUT_SIDE and 8 <= d.width <= MAX_INPUT_SIDE, "data.height/width", (d.height, d.width),
          f"sizes of 8..{MAX_INPUT_SIDE} pixels")
    for key in ("flip_p", "random_erasing_p"):
        _rule(_finite(getattr(d, key)) and 0 <= getattr(d, key) <= 1, f"data.{key}", getattr(d, key), "a probability in [0, 1]")
    _rule(d.pad >= 0, "data.pad", d.pad, "pixels >= 0")
    _rule(_finite(d.color_jitter) and d.color_jitter >= 0, "data.color_jitter", d.color_jitter, "a number >= 0")
    if d.resize is not None:
        _check_ints(d.resize, "data.resize", 8)
        _rule(len(d.resize) == 2, "data.resize", d.resize, "[height, width]")
    _rule(d.sampler in ("pk", "pairs", "random"), "data.sampler", d.sampler, "'pk', 'pairs' or 'random'")
    _rule(d.num_pids_per_batch >= 1, "data.num_pids_per_batch", d.num_pids_per_batch, "an integer >= 1 (P)")
    _rule(d.num_instances >= 1, "data.num_instances", d.num_instances, "an integer >= 1 (K)")
    _rule(d.batch_size is None or d.batch_size >= 2, "data.batch_size", d.batch_size, "null or an integer >= 2")
    _rule(_finite(d.neg_pos_ratio) and d.neg_pos_ratio > 0, "data.neg_pos_ratio", d.neg_pos_ratio, "a number > 0")
    _rule(d.num_workers is None or d.num_workers >= 0, "data.num_workers", d.num_workers, "null or an integer >= 0")
    _rule(d.eval_batch_size >= 1, "data.eval_batch_size", d.eval_batch_size, "an integer >= 1")
    for key in ("options", "eval_options"):
        _rule(all(isinstance(k, str) for k in getattr(d, key)), f"data.{key}", getattr(d, key), "a mapping with text keys")
    _rule(d.cache in ("none", "memory"), "data.cache", d.cache, "'none' or 'memory'")
    _rule(_finite(d.cache_max_mb) and d.cache_max_mb > 0, "data.cache_max_mb", d.cache_max_mb, "MiB > 0")


def _check_training(cfg: "Config") -> None:
    o, s, t = cfg.optim, cfg.sched, cfg.train
    _rule(o.name in ("adam", "amsgrad", "sgd"), "optim.name", o.name, "one of adam, amsgrad, sgd")
    _rule(_finite(o.lr) and 0 < o.lr <= 10, "optim.lr", o.lr, "a learning rate in (0, 10]")
    _rule(_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
    _rule(_finite(o.momentum) and 0 <= o.momentum < 1, "optim.momentum", o.momentum, "a number in [0, 1)")
    _rule(s.name in ("step", "cosine", "constant"), "sched.name", s.name, "one of step, cosine, constant")
    _rule(s.warmup_epochs >= 0, "sched.warmup_epochs", s.warmup_epochs, "an integer >= 0")
    _rule(_finite(s.warmup_factor) and 0 < s.warmup_factor <= 1, "sched.warmup_factor", s.warmup_factor, "a number in (0, 1]")
    _check_ints(s.milestones, "sched.milestones", 0)
    _rule(_finite(s.gamma) and 0 < s.gamma <= 1, "sched.gamma", s.gamma, "a number in (0, 1]")
    _rule(t.max_epochs >= 1, "train.max_epochs", t.max_epochs, "an integer >= 1")
    budget = t.max_minutes
    _rule(budget is None or (_finite(budget) and budget > 0), "train.max_minutes", budget, "null or minutes > 0")
    _rule(not s.by_time or budget is not None, "sched.by_time", s.by_time, "a wall-clock budget train.max_minutes")
    _rule(t.eval_every >= 0, "train.eval_every", t.eval_every, "an integer >= 0 (0: only at the end)")
    _rule(t.iters_per_epoch is None or t.iters_per_epoch >= 1, "train.iters_per_epoch", t.iters_per_epoch, "null or >= 1")
    _rule(re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None, "train.device", t.device, "auto, cpu, cuda or cuda:N")
    _rule(t.threads is None or t.threads >= 1, "train.threads", t.threads, "null or an integer >= 1")
    _rule(not (t.compile and cfg.msgr.weight > 0), "train.compile", t.compile,
          "false with msgr.weight > 0 (torch.compile has no double backward)")


def _check_options(options: dict | None, key: str, valid: dict[str, tuple[type, float]]) -> None:
    """An options mapping (or null) whose keys are ``valid`` and whose values are numbers of the
    given type at least the given minimum."""
    if options is None:
        return
    unknown = sorted(set(options) - set(valid))
    _rule(not unknown, key, options, f"a mapping with keys among {', '.join(valid)}")
    for name, value in options.items():
        kind, low = valid[name]
        ok = _finite(value) and (kind is float or (isinstance(value, int) and not isinstance(value, bool)))
        _rule(ok and value >= low, f"{key}.{name}", value, f"{'an integer' if kind is int else 'a number'} >= {low}")


def _check_methods(cfg: "Config") -> None:
    e, m, mu = cfg.eval, cfg.msgr, cfg.mutual
    _rule(e.metric in ("euclidean", "sqeuclidean", "cosine"), "eval.metric", e.metric, "euclidean, sqeuclidean or cosine")
    _rule(1 <= e.max_rank <= MAX_RANK, "eval.max_rank", e.max_rank, f"an integer in 1..{MAX_RANK}")
    _rule(_finite(e.local_weight) and e.local_weight >= 0, "eval.local_weight", e.local_weight, "a number >= 0")
    _rule(e.backend in ("auto", "torch", "onnxruntime"), "eval.backend", e.backend, "auto, torch or onnxruntime")
    _rule(e.single_shot_repeats >= 0, "eval.single_shot_repeats", e.single_shot_repeats, "an integer >= 0")
    _rule(e.num_workers is None or e.num_workers >= 0, "eval.num_workers", e.num_workers, "null or an integer >= 0")
    _check_options(e.rerank, "eval.rerank", {"k1": (int, 1), "k2": (int, 1), "lambda_value": (float, 0)})
    _check_options(e.aqe, "eval.aqe", {"k": (int, 0), "alpha": (float, 0)})
    if e.rerank is not None:
        lam = e.rerank.get("lambda_value", 0.3)
        _rule(lam <= 1, "eval.rerank.lambda_value", lam, "a number in [0, 1]")
    _rule(_finite(m.weight) and m.weight >= 0, "msgr.weight", m.weight, "a number >= 0")
    _check_ints(m.stages, "msgr.stages", 1)
    _rule(m.norm in ("l1", "l2", "linf"), "msgr.norm", m.norm, "l1, l2 or linf")
    for key in ("dml_weight", "metric_weight"):
        _rule(_finite(getattr(mu, key)) and getattr(mu, key) >= 0, f"mutual.{key}", getattr(mu, key), "a number >= 0")
    _rule(all(isinstance(p, dict) for p in mu.peers), "mutual.peers", mu.peers, "a list of model sections")


def _check_losses(spec: dict) -> None:
    """Build every loss once (whatever its ``start_epoch``), so a typo fails now, not at epoch N."""
    from ..losses import build_loss

    _rule(isinstance(spec, dict) and len(spec) > 0, "loss", spec, "a non-empty mapping loss name -> options")
    stripped = {}
    for name, options in spec.items():
        _rule(options is None or isinstance(options, dict), f"loss.{name}", options, "a mapping of options")
        options = dict(options or {})
        start = options.pop("start_epoch", 0)
        _rule(isinstance(start, int) and not isinstance(start, bool) and start >= 0, f"loss.{name}.start_epoch", start, "an integer >= 0")
        weight = options.get("weight", 1.0)
        _rule(_finite(weight), f"loss.{name}.weight", weight, "a finite number")
        stripped[name] = options
    try:
        build_loss(stripped)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"loss: {err}") from None


def validate_config(cfg: "Config") -> "Config":
    """Check every value of ``cfg`` against its valid range and build every loss once.

    Run before anything is written, so a bad value is reported before a run directory, a
    checkpoint or a log exists. Model and dataset keyword arguments are checked when the
    trainer builds them (also before anything is written).

    Returns:
        ``cfg`` unchanged.

    Raises:
        ConfigError: the first value out of range, naming its key and the expected range.
    """
    _rule(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    _rule(bool(cfg.model.name), "model.name", cfg.model.name, "a registered model name (reidkit models)")
    _rule(bool(cfg.data.name), "data.name", cfg.data.name, "a registered dataset name (reidkit datasets)")
    _check_data(cfg.data)
    _check_training(cfg)
    _check_methods(cfg)
    _check_losses(cfg.loss)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically).

    Raises:
        reidkit.fileio.OutputError: the file cannot be written.
    """
    from ..fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
