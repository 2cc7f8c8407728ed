"""The training loop: batches, a training method, checkpoints, budgets and evaluation.

Reads top to bottom: build data, the training method (its models and losses, chosen by
``method.name``: :mod:`reidkit.engine.methods`), optimiser and schedule from a :class:`Config`;
resume from ``run_dir/last.pt`` when asked; then for each epoch train, save an atomic
checkpoint, evaluate every ``eval_every`` epochs and log a JSON line; stop at ``max_epochs`` or
when the wall-clock budget ``max_minutes`` is spent; evaluate the final model and write
``results.json``. The loop never learns a method's name: what a step computes is the method's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..data import ReIDDataset, create_dataset
from ..data.loader import CacheTooLarge, ImageCache, train_loader
from ..data.transforms import TransformConfig, build_transforms
from ..data.samplers import PKSampler, RandomBatchSampler
from ..fileio import OutputError, atomic_write_text, clean_stale_temporaries, ensure_writable_dir
from .checkpoint import FORMAT_VERSION, CheckpointError, atomic_save, load_checkpoint, load_model_state
from .config import (
    Config,
    ConfigError,
    DataConfig,
    OptimConfig,
    SchedConfig,
    save_config,
    validate_config,
)
from .methods import Batch, MethodContext, TrainingMethod, build_method
from .methods.base import as_float  # noqa: F401  (re-exported: reidkit <= 0.1 imported it from here)
from .methods.supervised import model_configs as peer_model_configs
from .evaluate import NonFiniteEmbeddings, evaluate_model
from .distributed import agree, barrier, init_distributed
from .runtime import preserved_rng, resolve_device, rng_state, seed_everything, set_rng_state
from . import speed


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def transform_config(data: DataConfig) -> TransformConfig:
    """The augmentation settings of a :class:`DataConfig`."""
    return TransformConfig(
        height=data.height,
        width=data.width,
        flip_p=data.flip_p,
        pad=data.pad,
        random_erasing_p=data.random_erasing_p,
        color_jitter=data.color_jitter,
        resize=None if data.resize is None else tuple(data.resize),
    )


def build_datasets(data: DataConfig) -> tuple[ReIDDataset, ReIDDataset]:
    """``(train dataset, evaluation dataset)``; the same object unless ``eval_name`` is set.

    With ``data.skip_unreadable`` every image is decoded once and unreadable ones are dropped
    with a warning (:meth:`~reidkit.data.ReIDDataset.check_images`).

    Raises:
        ConfigError: an unknown dataset name (naming ``data.name`` / ``data.eval_name``).
        DatasetError: a bad option or files not in the dataset's layout.
    """
    train_ds = _dataset(data.name, data.root, data.options, "data.name")
    eval_ds = train_ds
    if data.eval_name is not None:
        eval_ds = _dataset(data.eval_name, data.eval_root, data.eval_options, "data.eval_name")
    if data.skip_unreadable:
        for ds in {id(train_ds): train_ds, id(eval_ds): eval_ds}.values():
            ds.check_images(skip_unreadable=True)
    return train_ds, eval_ds


def _dataset(name: str, root, options: dict, key: str) -> ReIDDataset:
    try:
        return create_dataset(name, root=root, **options)
    except KeyError as err:
        raise ConfigError(f"{key}: {err.args[0]}") from None


def train_images(dataset: ReIDDataset, data: DataConfig, log=print) -> ImageCache | None:
    """The training images decoded once into memory with ``data.cache: memory``, else ``None``
    (the loader decodes the files every epoch).

    Raises:
        ConfigError: the decoded images would need more than ``data.cache_max_mb``.
        ImageReadError: an image cannot be read (naming it).
    """
    if data.cache == "none":
        return None
    t0 = time.perf_counter()
    try:
        cache = ImageCache([s.img_path for s in dataset.train], dataset.load_image, int(data.cache_max_mb * 2**20))
    except CacheTooLarge as err:
        raise ConfigError(
            f"data.cache=memory: {err} (data.cache_max_mb={data.cache_max_mb:g}); raise data.cache_max_mb "
            "or set data.cache: none"
        ) from None
    log(f"data.cache: {len(cache)} training images decoded into {cache.nbytes / 2**20:.1f} MiB "
        f"in {time.perf_counter() - t0:.1f} s")
    return cache


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AMSGrad or SGD (Nesterov momentum) over the trainable parameters.

    Raises:
        ConfigError: unknown optimiser name.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name in ("adam", "amsgrad"):
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, amsgrad=cfg.name == "amsgrad")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    raise ConfigError(f"optim.name: unknown optimiser {cfg.name!r}; valid: adam, amsgrad, sgd")


def lr_factor(epoch: float, cfg: SchedConfig, max_epochs: int) -> float:
    """Learning-rate multiplier for 0-based ``epoch`` (fractional for time-based schedules):
    linear warmup, then step/cosine/constant.

    Raises:
        ConfigError: unknown schedule name.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_factor + (1 - cfg.warmup_factor) * epoch / cfg.warmup_epochs
    if cfg.name == "step":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.name == "cosine":
        span = max(1, max_epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    if cfg.name == "constant":
        return 1.0
    raise ConfigError(f"sched.name: unknown schedule {cfg.name!r}; valid: step, cosine, constant")


def schedule_epoch(
    elapsed_seconds: float, max_minutes: float | None, max_epochs: int, epochs_done: float = 0.0
) -> float:
    """The (fractional) schedule epoch of a time-based schedule: the larger of the budget share
    x ``max_epochs`` and the epochs actually done, so the schedule completes on a machine too
    slow for ``max_epochs`` in the budget (by time) and on one fast enough (by epochs) alike.

    Args:
        elapsed_seconds: training time spent so far.
        max_minutes: the budget ``train.max_minutes``.
        max_epochs: ``train.max_epochs``.
        epochs_done: epochs completed, fractional within the current one.

    Raises:
        ConfigError: no ``train.max_minutes`` budget is set.
    """
    if not max_minutes:
        raise ConfigError("sched.by_time needs a wall-clock budget train.max_minutes")
    return min(max_epochs, max(min(1.0, elapsed_seconds / (max_minutes * 60)) * max_epochs, epochs_done))


def _tensorboard_writer(log_dir: Path):
    """A TensorBoard ``SummaryWriter`` when the ``tensorboard`` extra is installed, else ``None``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def build_sampler(data: DataConfig, pids: list[int], seed: int):
    """The training batch sampler named by ``data.sampler``: ``"pk"`` (P identities x K images),
    ``"pairs"`` (Siamese pairs) or ``"random"`` (label-free, ``batch_size`` or P x K images).

    Raises:
        ConfigError: unknown sampler name.
    """
    if data.sampler == "pk":
        return PKSampler(pids, data.num_pids_per_batch, data.num_instances, seed)
    if data.sampler == "pairs":
        from ..data.pair_sampler import PairSampler

        batch = data.batch_size or data.num_pids_per_batch * data.num_instances
        return PairSampler(pids, batch, neg_pos_ratio=data.neg_pos_ratio, seed=seed)
    if data.sampler == "random":
        return RandomBatchSampler(len(pids), data.batch_size or data.num_pids_per_batch * data.num_instances, seed)
    raise ConfigError(f"data.sampler: unknown sampler {data.sampler!r}; valid: pk, pairs, random")


def _checked_sampler(data: DataConfig, pids: list[int], seed: int, dist_ctx=None):
    """:func:`build_sampler`, with a batch layout the data cannot fill reported as a ConfigError.

    Under torchrun (``dist_ctx.world_size = N > 1``) the sampler draws global batches N times
    the configured size (P x N identities) and this process takes its slice
    (:class:`~reidkit.engine.distributed.RankSlice`): whole identities, P x K per process.
    """
    from .distributed import RankSlice

    world = dist_ctx.world_size if dist_ctx is not None else 1
    if world > 1:
        data = dataclasses.replace(
            data, num_pids_per_batch=data.num_pids_per_batch * world,
            batch_size=None if data.batch_size is None else data.batch_size * world,
        )
    try:
        sampler = build_sampler(data, pids, seed)
        return RankSlice(sampler, world, dist_ctx.rank) if world > 1 else sampler
    except ValueError as err:
        raise ConfigError(
            f"data.sampler={data.sampler!r} with data.num_pids_per_batch={data.num_pids_per_batch}, "
            f"data.num_instances={data.num_instances}, data.batch_size={data.batch_size}: {err}"
        ) from None


def check_layouts(method: TrainingMethod, sampler, sampler_name: str) -> None:
    """Refuse, at start, a sampler whose batch layout a loss or the method cannot use.

    Raises:
        ConfigError: e.g. the ``ncc`` loss (Siamese pairs) with the ``pk`` sampler.
    """
    layout = getattr(sampler, "layout", None)
    for loss, needed in method.required_layouts().items():
        if needed != layout:
            raise ConfigError(
                f"loss.{loss} needs batches laid out as {needed!r}, but data.sampler={sampler_name!r} gives "
                f"{layout!r}: set data.sampler: {needed}"
            )
    if method.sampler_layouts is not None and layout not in method.sampler_layouts:
        raise ConfigError(
            f"method {type(method).__name__} needs data.sampler in {list(method.sampler_layouts)}, got {sampler_name!r}"
        )


def active_loss_spec(spec: dict, epoch: int) -> dict:
    """The loss entries active at 0-based ``epoch``: those whose ``start_epoch`` (default 0) has
    come, without the ``start_epoch`` key (it is a schedule, not a loss option)."""
    active = {}
    for name, options in spec.items():
        options = dict(options or {})
        if options.pop("start_epoch", 0) <= epoch:
            active[name] = options
    return active


RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "results.json")
"""Files of a run directory that ``--overwrite`` replaces (with ``peer*.pt`` and ``tensorboard/``)."""


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a run directory that would mix runs, before anything is built or written.

    Raises:
        ConfigError: ``resume`` and ``overwrite`` together.
        FileNotFoundError: ``resume`` without ``run_dir/last.pt``.
        FileExistsError: ``run_dir`` holds files and neither ``resume`` nor ``overwrite``.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give one of them")
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {run_dir / 'last.pt'}")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--output {str(run_dir)!r} exists and is not a folder")
    held = sorted(p.name for p in run_dir.iterdir() if not _is_temporary(p)) if run_dir.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:4]) + (" ..." if len(held) > 4 else "")
        hint = "--resume to continue it" if "last.pt" in held else "--resume (needs last.pt)"
        raise FileExistsError(
            f"--output {str(run_dir)!r} is not empty ({shown}); pass {hint}, --overwrite to replace "
            "the run, or choose another --output"
        )


def _results_config(config: dict | None) -> dict | None:
    """A config dict without the keys that change only a run's speed (:data:`speed.SPEED_KEYS`),
    so a resume may change them (or come from a checkpoint written before they existed)."""
    if not isinstance(config, dict):
        return config
    out = dict(config)
    for section, keys in speed.SPEED_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _remove_run_files(run_dir: Path) -> None:
    """Delete a previous run's files from ``run_dir`` (``--overwrite``); other files stay."""
    import shutil

    for path in run_dir.iterdir():
        if path.name in RUN_FILES or (path.name.startswith("peer") and path.suffix == ".pt"):
            path.unlink()
        elif path.name == "tensorboard" and path.is_dir():
            shutil.rmtree(path)


class Trainer:
    """One training run in ``run_dir`` (created; ``resume=True`` continues ``run_dir/last.pt``).

    Trains ``cfg.model``, or the ``cfg.mutual.peers`` together (one shared batch per step, one
    optimiser over all peers: Adam/SGD act per parameter, so this equals one optimiser per peer).

    Files written to ``run_dir``: ``config.yaml`` (resolved config), ``metrics.jsonl`` (one JSON
    object per epoch and per evaluation), ``last.pt`` (atomic checkpoint after every epoch;
    with peers it holds peer 0 as its model and every peer for resuming), ``peer{i}.pt`` (each
    peer's own checkpoint, for ``reidkit eval``), ``results.json`` (final evaluation).

    Everything (config values, losses, datasets, models, sampler, the checkpoint to resume) is
    built and checked before the first file is written; a non-empty ``run_dir`` is refused unless
    resuming or overwriting. The checkpoint carries the log records, so a run killed between the
    checkpoint and the log line gets its ``metrics.jsonl`` rebuilt on resume. Evaluation leaves
    the training RNG streams untouched, so a resumed run equals the uninterrupted one bit for bit.

    Raises:
        ConfigError: a config value, model keyword, dataset option or batch layout is invalid.
        FileExistsError: ``run_dir`` is not empty and neither ``resume`` nor ``overwrite``.
        FileNotFoundError: ``resume`` is true but ``run_dir/last.pt`` does not exist.
        CheckpointError: the checkpoint to resume is unreadable or belongs to another model.
        reidkit.fileio.OutputError: ``run_dir`` cannot be written.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, log=print, overwrite: bool = False):
        self.cfg, self.run_dir = validate_config(cfg), Path(run_dir)
        self.ckpt_path = self.run_dir / "last.pt"
        self.dist, dist_device = init_distributed(cfg.train.device)  # torchrun: join the process group
        self.is_main = self.dist.is_main
        self.log = log if self.is_main else (lambda *_: None)
        check_run_dir(self.run_dir, resume, overwrite)
        barrier()  # every process has checked the folder before rank 0 writes into it
        try:
            self.device = dist_device or resolve_device(cfg.train.device)
        except ValueError as err:
            raise ConfigError(f"train.device: {err}") from None
        reason = speed.compile_unavailable(self.device) if cfg.train.compile else None
        if reason:
            raise ConfigError(f"train.compile: {reason}; set train.compile: false")
        speed.set_threads(cfg.train.threads)
        speed.set_flush_denormal(cfg.train.flush_denormal)
        speed.reuse_freed_memory(cfg.train.reuse_memory)
        self.train_ds, self.eval_ds = build_datasets(cfg.data)
        num_classes = self.train_ds.num_train_pids
        if num_classes < 2:
            raise ConfigError(f"data: {cfg.data.name}: training needs at least 2 identities, found {num_classes}")
        self.model_cfgs = peer_model_configs(cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp and self.device.type == "cuda")
        ctx = MethodContext(cfg, self.device, self.train_ds, num_classes, log, self.scaler)
        self.method: TrainingMethod = build_method(ctx)
        self.models = self.method.models
        self.model = self.models[0]
        if cfg.train.channels_last:
            speed.to_channels_last(self.method)
        self.input_format = speed.memory_format(cfg.train.channels_last)
        if self.dist.active:
            self._distribute()
        if cfg.train.compile:
            self.method.wrap_forwards(speed.CompiledForward)
        seed_everything(cfg.seed + self.dist.rank)  # data order and augmentation do not depend on the models built
        self.optimizer = build_optimizer(self.method, cfg.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: lr_factor(e, cfg.sched, cfg.train.max_epochs)
        )
        sampler = _checked_sampler(cfg.data, [s.pid for s in self.train_ds.train], cfg.seed, self.dist)
        check_layouts(self.method, sampler, cfg.data.sampler)
        self.loader = train_loader(
            self.train_ds,
            self.method.train_transform(build_transforms(transform_config(cfg.data), train=True)),
            sampler,
            num_workers=cfg.data.num_workers,
            images=train_images(self.train_ds, cfg.data, self.log),
        )
        self.epoch, self.elapsed, self.records = 0, 0.0, []
        resume_state = load_checkpoint(self.ckpt_path, for_resume=True) if resume else None
        if resume_state is not None:
            self._restore(resume_state)
        self._tensorboard = None
        if self.is_main:  # only rank 0 writes
            ensure_writable_dir(self.run_dir, "--output")
            if overwrite:
                _remove_run_files(self.run_dir)
            clean_stale_temporaries(self.run_dir)
            if resume_state is not None:
                self._rebuild_log()
            save_config(cfg, self.run_dir / "config.yaml")
            self._tensorboard = _tensorboard_writer(self.run_dir / "tensorboard")

    def _distribute(self) -> None:
        """Under torchrun: synchronised batch norm when asked, DDP around every model."""
        from .distributed import convert_sync_batchnorm, data_parallel

        if not getattr(self.method, "supports_distributed", True):
            raise ConfigError(f"method.name: {type(self.method).__name__} does not run under torchrun yet")
        if self.cfg.train.sync_bn:
            for model in self.models:
                convert_sync_batchnorm(model, self.device)
        self.method.distribute(lambda model, name: data_parallel(model, self.device, name))

    # ------------------------------------------------------------------ checkpoints
    def _model_entry(self, i: int) -> dict:
        mcfg = self.model_cfgs[i]
        return {
            "model": self.models[i].state_dict(),
            "model_name": mcfg.name,
            "model_kwargs": dict(mcfg.kwargs),
            "num_classes": self.train_ds.num_train_pids,
            "config": self.cfg.to_dict(),
            "format_version": FORMAT_VERSION,
        }

    def _state(self) -> dict:
        state = self._model_entry(0)
        state.update(
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            epoch=self.epoch,
            elapsed_seconds=self.elapsed,
            rng=rng_state(),
            log=list(self.records),
            method_state=self.method.extra_state_dict(),
        )
        if len(self.models) > 1:
            state["peers"] = [m.state_dict() for m in self.models]
        return state

    def _save(self) -> None:
        if not self.is_main:
            return
        atomic_save(self._state(), self.ckpt_path)
        if len(self.models) > 1:
            for i in range(len(self.models)):
                atomic_save(self._model_entry(i), self.run_dir / f"peer{i}.pt")

    def _restore(self, ckpt: dict) -> None:
        """Load the training state of ``ckpt`` (read by ``load_checkpoint(for_resume=True)``).

        Raises:
            CheckpointError: the checkpoint's model, peers or optimiser do not fit this config.
        """
        where = f"--resume {self.ckpt_path}"
        names = [m.name for m in self.model_cfgs]
        if ckpt["model_name"] != names[0] or len(ckpt.get("peers", [None])) != len(names):
            raise CheckpointError(
                f"{where}: the checkpoint was trained with model {ckpt['model_name']!r}"
                f"{' and peers' if 'peers' in ckpt else ''}, the config asks for {', '.join(names)}; "
                "resume with the run's own config.yaml"
            )
        if _results_config(ckpt.get("config")) != _results_config(self.cfg.to_dict()):
            warnings.warn(f"resuming {self.ckpt_path} with a config that differs from the one it was trained with")
        for i, (model, state) in enumerate(zip(self.models, ckpt.get("peers", [ckpt["model"]]))):
            load_model_state(model, state, f"{where} (model {names[i]!r})")
        try:
            self.method.load_extra_state_dict(ckpt.get("method_state", {}))
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt.get("scaler", {}))
            set_rng_state(ckpt["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            raise CheckpointError(f"{where}: its optimiser/scheduler/RNG state does not fit this run ({err})") from None
        self.epoch, self.elapsed = int(ckpt["epoch"]), float(ckpt.get("elapsed_seconds", 0.0))
        self.records = ckpt.get("log")  # None in a format-1 checkpoint: rebuilt from the file
        self.log(f"resumed {self.ckpt_path} after epoch {self.epoch} ({self.elapsed / 60:.1f} min trained)")

    def _rebuild_log(self) -> None:
        """Make ``metrics.jsonl`` agree with the checkpoint: one line per epoch it completed.

        A line already in the file is kept (it may carry that epoch's evaluation); a line the
        checkpoint has but the file lost (killed between the two writes) is restored from the
        checkpoint; lines past the checkpoint's epoch (epochs that will be trained again) and
        torn lines are dropped. The file is replaced atomically.
        """
        path = self.run_dir / "metrics.jsonl"
        on_disk = {}
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("epoch"), int) and not record.get("final"):
                    on_disk[record["epoch"]] = record
        if self.records is None:  # a format-1 checkpoint holds no log: keep the file's lines
            self.records = [r for e, r in sorted(on_disk.items()) if e <= self.epoch]
        lines = [json.dumps(on_disk.get(r["epoch"], r)) + "\n" for r in self.records if r.get("epoch", 0) <= self.epoch]
        atomic_write_text(path, "".join(lines))

    def _append_log(self, record: dict) -> None:
        if not self.is_main:
            return
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            raise OutputError(f"cannot write {str(path)!r}: {err.strerror}") from None
        if self._tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self._tensorboard.add_scalar(key, value, self.epoch)
            self._tensorboard.flush()

    # ------------------------------------------------------------------ loop
    def _time_based_lr(self, iteration: int = 0) -> None:
        """With ``sched.by_time``, set the learning rate from the share of the wall-clock budget
        spent or of the epochs done, whichever is further (:func:`schedule_epoch`); ``iteration``
        is the 0-based iteration within the current epoch."""
        if not self.cfg.sched.by_time:
            return
        per_epoch = len(self.loader)
        if self.cfg.train.iters_per_epoch:
            per_epoch = min(per_epoch, self.cfg.train.iters_per_epoch)
        done = self.epoch + iteration / max(per_epoch, 1)
        epoch = schedule_epoch(self.elapsed, self.cfg.train.max_minutes, self.cfg.train.max_epochs, done)
        factor = lr_factor(epoch, self.cfg.sched, self.cfg.train.max_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def _budget_spent(self) -> bool:
        budget = self.cfg.train.max_minutes
        return budget is not None and self.elapsed >= budget * 60

    def _batch(self, raw) -> Batch:
        """The loader's ``(images [, views], pids, camids, indices)`` as a :class:`Batch` on the
        device; pids are blanked to -1 for a method that learns without labels."""
        images, pids, camids, indices = raw
        views, layout = None, self.input_format
        if isinstance(images, (list, tuple)):  # the method asked for (image, view) pairs
            images, views = images
            views = views.to(self.device, non_blocking=True, memory_format=layout)
        pids = pids.to(self.device) if self.method.uses_labels else torch.full_like(pids, -1, device=self.device)
        images = images.to(self.device, non_blocking=True, memory_format=layout)
        return Batch(images, pids, camids.to(self.device), indices.to(self.device), views)

    def train_step(self, raw, iteration: int = 0) -> tuple[Batch, torch.Tensor, dict[str, float]]:
        """One optimiser step on a loader batch ``raw``: the method's loss, backward, update.

        Returns:
            ``(batch, total loss, loss parts)``.

        Raises:
            TrainingDiverged: the loss is not finite (``iteration``, 0-based, is named).
        """
        batch = self._batch(raw)
        total, parts = self.method.training_step(batch)
        if agree(not torch.isfinite(total)):  # every process stops together
            raise TrainingDiverged(
                f"loss became {total.item()} at epoch {self.epoch + 1}, iteration {iteration + 1} "
                f"(parts: {parts}); the last good checkpoint {self.ckpt_path} is kept. "
                "Lower optim.lr or turn train.amp off."
            )
        self._time_based_lr(iteration)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step()
        return batch, total, parts

    def train_one_epoch(self) -> dict:
        """One pass over the sampler; returns mean loss parts, lr and images/s."""
        self.method.train()
        self.method.on_epoch_start(self.epoch)
        self.loader.sampler.set_epoch(self.epoch)
        sums: dict[str, float] = {}
        n_iter = n_img = 0
        t0 = t_last = time.perf_counter()
        limit = self.cfg.train.iters_per_epoch
        bar = tqdm(self.loader, desc=f"epoch {self.epoch + 1}", leave=False, disable=None)
        for raw in bar:
            batch, total, parts = self.train_step(raw, n_iter)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n_iter, n_img = n_iter + 1, n_img + batch.images.shape[0]
            now = time.perf_counter()
            self.elapsed, t_last = self.elapsed + now - t_last, now
            bar.set_postfix(loss=f"{total.item():.3f}", img_s=f"{n_img / (time.perf_counter() - t0):.1f}")
            if (limit is not None and n_iter >= limit) or agree(self._budget_spent()):
                break
        seconds = time.perf_counter() - t0
        record = {k: v / max(n_iter, 1) for k, v in sums.items()}
        record.update(lr=self.optimizer.param_groups[0]["lr"], images_per_s=n_img / seconds, seconds=seconds)
        return record

    def evaluate(self) -> dict:
        """Rank-k, mAP and mINP of the current model (each peer's, prefixed ``peer{i}.``).

        The global RNG streams are left as they were (:func:`~reidkit.engine.runtime.preserved_rng`).

        Raises:
            TrainingDiverged: the model's embeddings are not finite.
        """
        results = {}
        with preserved_rng():
            for i, model in enumerate(self.models):
                try:
                    metrics = evaluate_model(model, self.eval_ds, self.cfg, self.device).as_dict()
                except NonFiniteEmbeddings as err:
                    raise TrainingDiverged(
                        f"training diverged by epoch {self.epoch}: {err}; the checkpoint {self.ckpt_path} holds "
                        "that model. Lower optim.lr"
                    ) from None
                prefix = f"peer{i}." if len(self.models) > 1 else ""
                results.update({f"{prefix}{k}": v for k, v in metrics.items()})
        return results

    def fit(self) -> dict:
        """Train to the end (or the budget), evaluate, write ``results.json``; return its content."""
        cfg = self.cfg.train
        self.log(f"{self.train_ds}\nrun dir: {self.run_dir}  device: {self.device}")
        if self.epoch == 0 and not self.records:
            with preserved_rng():
                self.method.prepare(self.loader)
        while self.epoch < cfg.max_epochs and not agree(self._budget_spent()):
            record = self.train_one_epoch()
            if not self.cfg.sched.by_time:  # a time-based schedule sets the rate every iteration
                self.scheduler.step()
            self.epoch += 1
            record.update(epoch=self.epoch, elapsed_minutes=self.elapsed / 60)
            if cfg.eval_every and self.epoch % cfg.eval_every == 0 and self.epoch < cfg.max_epochs:
                record.update(self.evaluate())  # before the save: the checkpoint's record holds the metrics too
            self.records.append(dict(record))
            self._save()  # the checkpoint carries the record: a kill before the log line loses nothing
            self._append_log(record)
            self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        results = {"epochs": self.epoch, "train_minutes": self.elapsed / 60, **self.evaluate()}
        self._append_log({"final": True, **results})
        if self.is_main:
            atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=2))
        self.log("final: " + json.dumps(results))
        return results
