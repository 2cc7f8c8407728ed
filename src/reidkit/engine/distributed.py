"""Data-parallel training and extraction over several processes (``torchrun``).

``torchrun --nproc_per_node N -m reidkit train CONFIG`` (or ``reidkit train CONFIG --nproc N``)
starts N processes; each reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` from the environment
torchrun sets, joins a ``torch.distributed`` process group (NCCL on GPUs, gloo on CPUs;
several machines through torchrun's usual ``--nnodes / --rdzv-*`` flags) and trains its copy of
the model wrapped in ``DistributedDataParallel``, which averages the gradients of every step
over the processes.

* Batches: the run's sampler draws *global* batches of ``world_size`` times the configured size
  (P x world identities for the PK sampler) with the run's seed, the same on every process;
  process r takes the r-th contiguous slice, so each process gets whole identities (P of them,
  K images each) and the union of the slices is the global batch.
* Batch norm: each process normalises with its own slice's statistics unless
  ``train.sync_bn: true``, which converts every BatchNorm to a synchronised one (torch's
  ``SyncBatchNorm`` on CUDA; on CPU, where torch has none, :class:`CPUSyncBatchNorm` here) so
  that N processes x batch B compute what one process computes with batch N x B.
* Only rank 0 writes (config, log, checkpoints, results); every rank can ``--resume`` from the
  same ``last.pt``. Evaluation and ``reidkit extract`` embed a 1/N shard per process and gather.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn


class DistContext(NamedTuple):
    """This process's place in the process group (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def from_environment() -> DistContext:
    """The context torchrun describes in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (single
    process when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device_name: str = "auto") -> tuple[DistContext, torch.device | None]:
    """Join the process group when launched by torchrun; the device of this process.

    Returns:
        ``(context, device)``; ``device`` is ``cuda:LOCAL_RANK`` on GPUs, ``cpu`` otherwise, or
        ``None`` when not distributed (the caller resolves ``device_name`` itself).
    """
    ctx = from_environment()
    if not ctx.active:
        return ctx, None
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    device = torch.device(f"cuda:{ctx.local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return ctx, device


def current() -> DistContext:
    """The context of an initialised process group, else the single-process one."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistContext()


def barrier() -> None:
    if current().active:
        dist.barrier()


def agree(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (stop decisions must be the same)."""
    if not current().active:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(obj) -> list:
    """``obj`` of every process, in rank order (``[obj]`` when not distributed)."""
    ctx = current()
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def shard(items: list, ctx: DistContext | None = None) -> list:
    """Process r's contiguous 1/N share of ``items`` (shares differ by at most one item)."""
    ctx = ctx or current()
    if not ctx.active:
        return items
    n, k = len(items), ctx.world_size
    start, stop = ctx.rank * n // k, (ctx.rank + 1) * n // k
    return items[start:stop]


class RankSlice(torch.utils.data.Sampler[int]):
    """Process ``rank``'s slice of each global batch a sampler yields.

    Args:
        sampler: yields global batches of ``sampler.batch_size`` indices back to back (a
            :class:`~reidkit.data.samplers.PKSampler` built with ``P * world_size`` identities,
            a pair sampler or a random sampler with ``world_size`` times the batch).
        world_size: N.
        rank: r.

    Raises:
        ValueError: the global batch does not split into N equal slices.
    """

    def __init__(self, sampler, world_size: int, rank: int):
        if sampler.batch_size % world_size:
            raise ValueError(f"a global batch of {sampler.batch_size} does not split into {world_size} equal slices")
        self.sampler, self.world_size, self.rank = sampler, world_size, rank
        self.layout = getattr(sampler, "layout", None)

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.world_size

    def __iter__(self) -> Iterator[int]:
        size, batch = self.sampler.batch_size, []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == size:
                yield from batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
                batch = []


class TrainForward(nn.Module):
    """``forward(x) = model.<method>(x)``: lets ``DistributedDataParallel`` (which hooks
    ``forward``) wrap a model whose training forward is ``forward_train`` or another method."""

    def __init__(self, model: nn.Module, method: str = "forward_train"):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: Tensor):
        return getattr(self.model, self.method)(x)


def data_parallel(model: nn.Module, device: torch.device, method: str = "forward_train") -> nn.Module:
    """``DistributedDataParallel(TrainForward(model, method))`` on ``device``.

    ``find_unused_parameters`` is on: a loss mapping may leave a head unused (a classifier
    without a classification loss), which plain DDP would wait for forever.
    """
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(TrainForward(model, method), device_ids=ids,
                                               find_unused_parameters=True)


class CPUSyncBatchNorm(nn.Module):
    """Batch norm whose batch statistics are those of the global batch over all processes.

    torch's ``SyncBatchNorm`` runs on GPUs only; this CPU version (gloo) computes the global mean
    from all-reduced ``sum x`` and count, then the biased variance from all-reduced
    ``sum (x - mean)^2`` (two passes: ``E[x^2] - E[x]^2`` loses all precision on channels of
    small variance), with ``torch.distributed.nn.functional.all_reduce``, which is
    differentiable, so the backward pass is the global batch's too. Running statistics use the unbiased global variance, as
    ``BatchNorm`` does. In eval mode (or not distributed) it is a plain batch norm.

    Args:
        bn: the ``BatchNorm1d`` / ``BatchNorm2d`` whose parameters and buffers it takes over.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, bn.track_running_stats
        self.weight, self.bias = bn.weight, bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))
        self.train(bn.training)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and current().active):
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias,
                self.training or not self.track_running_stats, self.momentum or 0.0, self.eps,
            )
        from torch.distributed.nn.functional import all_reduce

        dims = [d for d in range(x.dim()) if d != 1]
        c, shape = self.num_features, [1, self.num_features] + [1] * (x.dim() - 2)
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype)
        stats = all_reduce(torch.cat([x.sum(dims), count]), group=_bn_group())  # (C + 1,)
        n = stats[-1]
        mean = stats[:c] / n
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims), group=_bn_group()) / n  # biased, two-pass (no cancellation)
        y = centred / torch.sqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(n - 1, 1), alpha=m)
                self.num_batches_tracked.add_(1)
        return y


_BN_GROUP = None


def _bn_group():
    """A process group of its own for batch-norm statistics: their all-reduces (forward and
    backward) must not interleave with DDP's gradient all-reduces, which run asynchronously on
    the default group while the backward pass goes on."""
    global _BN_GROUP
    if _BN_GROUP is None:
        _BN_GROUP = dist.new_group(backend="gloo")
    return _BN_GROUP


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` synchronised over the process group (state dict unchanged:
    parameters and buffers keep their names and tensors)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            setattr(module, name, CPUSyncBatchNorm(child))
        else:
            convert_sync_batchnorm(child, device)
    return module
