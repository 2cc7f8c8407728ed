"""Old (full argsort) vs new (sorted values + binary search) ``evaluate_rank``, side by side.

Problems are random with the label structure of the real test sets (the metrics themselves are
meaningless, only time, memory and old/new agreement matter):

* market1501: 3,368 queries x 15,913 gallery, 750 test ids (+2,793 distractors, pid 0), 6 cameras.
* msmt17: 11,659 queries x 82,161 gallery, 3,060 test ids, 15 cameras. Its float32 distance
  matrix alone is 3.8 GB; it is generated in place, row block by row block (or in a
  memory-mapped file with ``--memmap-dir``).

"old" is ``evaluate_rank`` as it was before issue 7 (every row argsorted through packed int64
keys, 32 bytes per entry), kept in this file; "new" is today's :mod:`reidkit.evaluation.rank`.
Both run on the same inputs in the same process, one after the other.

Memory is reported two ways, both measured around the evaluation call only (the distance matrix or
features are allocated before):

* traced peak: ``tracemalloc`` peak; numpy allocations are traced, torch's are not.
* RSS peak: peak resident set size (VmHWM, reset through /proc/self/clear_refs) minus the resident
  size just before the call; falls back to ``ru_maxrss`` (never reset) where unavailable.

The last columns are the largest absolute old/new differences of the CMC curve, mAP and mINP.

Usage::

    PYTHONPATH=src python benchmarks/bench_evaluate_rank.py --sizes market1501 msmt17
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from reidkit.evaluation import RankResult, evaluate_rank, evaluate_rank_from_features
from reidkit.evaluation import rank as rank_module
from reidkit.evaluation.distance import check_features, compute_distance_matrix

MIB = 2**20


@dataclass(frozen=True)
class ProblemSize:
    num_query: int
    num_gallery: int
    num_ids: int
    num_cameras: int
    num_distractors: int


SIZES = {
    "market1501": ProblemSize(3_368, 15_913, 750, 6, 2_793),
    "msmt17": ProblemSize(11_659, 82_161, 3_060, 15, 0),
}


# --- the ranking before issue 7, for the side-by-side -----------------------------------------

_DROPPED, _KEPT, _HIT = 0, 1, 2  # status of a gallery item for a query
_OLD_BYTES_PER_ENTRY = 32


def old_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, block_size=None):
    """``evaluate_rank`` before issue 7: each block of rows fully argsorted."""
    num_query, num_gallery = rank_module._check_distmat(distmat)
    labels = rank_module._check_labels(q_pids, g_pids, q_camids, g_camids, num_query, num_gallery)
    block_size = block_size or _old_auto_block_size(num_gallery)
    rank_module._check_max_rank(max_rank, num_gallery)
    rows_iter = rank_module._row_blocks(num_query, block_size)
    blocks = ((rows, _old_cpu_block(distmat[rows])) for rows in rows_iter)
    return _old_evaluate_blocks(blocks, labels, max_rank)


def old_evaluate_rank_from_features(
    qf, gf, q_pids, g_pids, q_camids, g_camids, metric="euclidean", max_rank=50, block_size=None
):
    """``evaluate_rank_from_features`` before issue 7."""
    check_features(qf, gf, metric)
    num_query, num_gallery = qf.shape[0], gf.shape[0]
    labels = rank_module._check_labels(q_pids, g_pids, q_camids, g_camids, num_query, num_gallery)
    block_size = block_size or _old_auto_block_size(num_gallery)
    rank_module._check_max_rank(max_rank, num_gallery)
    with torch.no_grad():
        blocks = (
            (rows, compute_distance_matrix(qf[rows], gf, metric).cpu())
            for rows in rank_module._row_blocks(num_query, block_size)
        )
        return _old_evaluate_blocks(blocks, labels, max_rank)


def _old_auto_block_size(num_gallery: int) -> int:
    return max(1, rank_module.MEMORY_BUDGET_BYTES // (_OLD_BYTES_PER_ENTRY * num_gallery))


def _old_cpu_block(block):
    if isinstance(block, np.ndarray):
        block = torch.from_numpy(np.require(block, requirements=["C", "W"]))
    block = block.detach().cpu()
    return block.float() if block.dtype in (torch.float16, torch.bfloat16) else block


def _old_evaluate_blocks(blocks, labels, max_rank):
    scores = []
    for rows, dist in blocks:
        if dist.is_floating_point() and torch.isnan(dist).any():
            raise ValueError(f"distmat contains NaN (query rows {rows.start}..{rows.stop - 1})")
        hit_rows, hit_ranks = _old_hit_ranks(dist, labels, rows)
        scores.append(rank_module._query_scores(hit_rows, hit_ranks, num_rows=dist.shape[0]))
    first_rank, ap, inp = (np.concatenate(column) for column in zip(*scores))
    return rank_module._summarise(rank_module._QueryScores(first_rank, ap, inp), max_rank)


def _old_hit_ranks(dist, labels, rows):
    status = np.take_along_axis(_old_gallery_status(labels, rows), _old_closest_first(dist), axis=1)
    num_gallery = status.shape[1]
    hits = np.flatnonzero(status == _HIT)  # row-major flat positions: by row, then by position
    dropped = np.flatnonzero(status == _DROPPED)
    hit_rows, hit_positions = np.divmod(hits, num_gallery)
    row_starts = hit_rows * num_gallery
    dropped_above = np.searchsorted(dropped, hits) - np.searchsorted(dropped, row_starts)
    return hit_rows, hit_positions + 1 - dropped_above


def _old_gallery_status(labels, rows):
    same_pid = labels.q_pids[rows, None] == labels.g_pids  # (b, G) bool
    same_cam = labels.q_camids[rows, None] == labels.g_camids  # (b, G) bool
    keep = ~(same_pid & same_cam) & (labels.g_pids != rank_module.JUNK_PID)
    return keep.view(np.uint8) + (same_pid & keep).view(np.uint8)


def _old_closest_first(dist):
    if dist.dtype == torch.float32 and dist.shape[1] < 2**32:
        return _old_sort_packed_keys(dist.numpy())
    return torch.sort(dist, dim=1, stable=True).indices.numpy()


def _old_sort_packed_keys(dist):
    bits = (dist + np.float32(0)).view(np.int32)  # (b, G) new array; -0.0 + 0 = +0.0
    bits ^= (bits >> 31) & np.int32(0x7FFFFFFF)  # now ordered like the floats
    keys = bits.astype(np.int64) << 32  # (b, G)
    keys |= np.arange(dist.shape[1], dtype=np.int64)
    keys.sort(axis=1)
    keys &= 0xFFFFFFFF  # back to gallery indices
    return keys


# --- problems and measurement -------------------------------------------------------------------


def random_labels(size: ProblemSize, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``(q_pids, g_pids, q_camids, g_camids)``, int64; gallery distractors have pid 0."""
    g_pids = rng.integers(1, size.num_ids + 1, size=size.num_gallery)
    g_pids[: size.num_distractors] = 0
    q_pids = rng.integers(1, size.num_ids + 1, size=size.num_query)
    q_camids = rng.integers(0, size.num_cameras, size=size.num_query)
    g_camids = rng.integers(0, size.num_cameras, size=size.num_gallery)
    return q_pids, g_pids, q_camids, g_camids


def random_distmat(
    size: ProblemSize, rng: np.random.Generator, memmap_dir: str | None, rows: int = 256
) -> np.ndarray:
    """``(num_query, num_gallery)`` float32 uniform distances, filled block by block in place.

    With ``memmap_dir`` the matrix lives in a temporary file there (deleted when unmapped).
    """
    shape = (size.num_query, size.num_gallery)
    if memmap_dir is None:
        distmat = np.empty(shape, dtype=np.float32)
    else:
        with tempfile.NamedTemporaryFile(dir=memmap_dir, suffix=".f32") as backing:
            distmat = np.memmap(backing.name, dtype=np.float32, mode="w+", shape=shape)
    for start in range(0, size.num_query, rows):
        rng.random(out=distmat[start : start + rows], dtype=np.float32)
    return distmat


def _resident_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (e.g. VmRSS, VmHWM) in bytes, None if unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Measurement:
    result: RankResult
    seconds: float  # wall time
    cpu_seconds: float  # CPU time of the process, all threads (less sensitive to a busy machine)
    traced_mib: float  # tracemalloc peak
    rss_mib: float  # RSS peak above the RSS before the call


def measure(run: Callable[[], RankResult]) -> Measurement:
    gc.collect()
    can_reset = _reset_peak_rss()
    rss_before = _resident_bytes("VmRSS") or 0
    tracemalloc.start()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = run()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = _resident_bytes("VmHWM") if can_reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_mib = max(peak - rss_before, 0) / MIB
    return Measurement(result, seconds, cpu_seconds, traced_peak / MIB, rss_mib)


def _median_run(runs: list[Measurement]) -> Measurement:
    """The run with the median wall time; its memory columns are the largest of all runs."""
    ordered = sorted(runs, key=lambda m: m.seconds)
    middle = ordered[(len(ordered) - 1) // 2]
    return Measurement(middle.result, middle.seconds, middle.cpu_seconds,
                       max(m.traced_mib for m in runs), max(m.rss_mib for m in runs))


def side_by_side(name: str, kind: str, shape: str, old: Callable, new: Callable, skip_old: bool,
                 repeats: int = 1):
    """One table row: the new run, and the old one unless ``skip_old``; with ``repeats`` > 1
    the two alternate that many times and the median (by wall time) of each is kept."""
    new_runs, old_runs = [], []
    for _ in range(repeats):
        new_runs.append(measure(new))
        if not skip_old:
            old_runs.append(measure(old))
    return name, kind, shape, (_median_run(old_runs) if old_runs else None), _median_run(new_runs)


def run_size(name: str, args: argparse.Namespace) -> list[tuple]:
    """Benchmark rows for one problem size: from a distmat, then (optionally) from features."""
    size, rng = SIZES[name], np.random.default_rng(args.seed)
    labels = random_labels(size, rng)
    shape = f"{size.num_query} x {size.num_gallery}"
    distmat = random_distmat(size, rng, args.memmap_dir)
    rows = [
        side_by_side(
            name,
            "distmat",
            shape,
            lambda: old_evaluate_rank(distmat, *labels, block_size=args.block_size),
            lambda: evaluate_rank(distmat, *labels, block_size=args.block_size),
            args.skip_old,
            args.repeats,
        )
    ]
    del distmat
    if args.dim > 0:
        generator = torch.Generator().manual_seed(args.seed)
        qf = torch.randn(size.num_query, args.dim, generator=generator)
        gf = torch.randn(size.num_gallery, args.dim, generator=generator)
        options = dict(metric="euclidean", block_size=args.block_size)
        rows.append(
            side_by_side(
                name,
                f"features D={args.dim}",
                shape,
                lambda: old_evaluate_rank_from_features(qf, gf, *labels, **options),
                lambda: evaluate_rank_from_features(qf, gf, *labels, **options),
                args.skip_old,
                args.repeats,
            )
        )
    return rows


def _max_differences(old: RankResult, new: RankResult) -> tuple[float, float, float]:
    cmc = float(np.abs(old.cmc - new.cmc).max())
    return cmc, abs(old.mAP - new.mAP), abs(old.mINP - new.mINP)


def print_table(rows: list[tuple]) -> None:
    header = f"{'size':<11} {'input':<15} {'Q x G':<15} {'old s':>7} {'new s':>7} {'speed-up':>8} "
    header += f"{'old cpu s':>9} {'new cpu s':>9} "
    header += f"{'old tr/RSS+ MiB':>16} {'new tr/RSS+ MiB':>16} {'max|dCMC|':>9} {'|dmAP|':>8} "
    header += f"{'|dmINP|':>8} {'rank1':>6} {'mAP':>6}"
    print(header)
    for name, kind, shape, old, new in rows:
        new_memory = f"{new.traced_mib:.0f}/{new.rss_mib:.0f}"
        line = f"{name:<11} {kind:<15} {shape:<15} "
        if old is None:
            line += f"{'-':>7} {new.seconds:>7.2f} {'-':>8} {'-':>9} {new.cpu_seconds:>9.2f} "
            line += f"{'-':>16} {new_memory:>16} "
            line += f"{'-':>9} {'-':>8} {'-':>8} "
        else:
            old_memory = f"{old.traced_mib:.0f}/{old.rss_mib:.0f}"
            cmc, mAP, mINP = _max_differences(old.result, new.result)
            line += f"{old.seconds:>7.2f} {new.seconds:>7.2f} {old.seconds / new.seconds:>7.1f}x "
            line += f"{old.cpu_seconds:>9.2f} {new.cpu_seconds:>9.2f} "
            line += f"{old_memory:>16} {new_memory:>16} {cmc:>9.1e} {mAP:>8.1e} {mINP:>8.1e} "
        print(line + f"{new.result.rank(1):>6.3f} {new.result.mAP:>6.3f}", flush=True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["market1501"])
    parser.add_argument("--dim", type=int, default=512, help="feature size D; 0 skips features")
    parser.add_argument("--block-size", type=int, default=None, help="default: automatic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-old", action="store_true", help="time the new code only")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternate old and new this many times and report the median of each")
    parser.add_argument("--memmap-dir", default=None, help="keep distmat in a file there")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(
        f"{_cpu_model()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; torch "
        f"{torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}"
    )
    print_table([row for name in args.sizes for row in run_size(name, args)])


if __name__ == "__main__":
    main()
