"""Wall time and extra memory of ``evaluate_rank(_from_features)`` at benchmark scale.

Problems are random with the label structure of the real test sets (the metrics themselves are
meaningless, only time and memory matter):

* market1501: 3,368 queries x 15,913 gallery, 750 test ids (+2,793 distractors, pid 0), 6 cameras.
* msmt17: 11,659 queries x 82,161 gallery, 3,060 test ids, 15 cameras. Its float32 distance
  matrix alone is 3.8 GB; it is generated in place, row block by row block.

Memory is reported two ways, both measured around the evaluation call only (the distance matrix or
features are allocated before):

* traced peak: ``tracemalloc`` peak; numpy allocations are traced, torch's are not.
* RSS peak: peak resident set size (VmHWM, reset through /proc/self/clear_refs) minus the resident
  size just before the call; falls back to ``ru_maxrss`` (never reset) where unavailable.

Usage::

    PYTHONPATH=src python benchmarks/bench_evaluate_rank.py --sizes market1501 msmt17
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
import tracemalloc
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from reidkit.evaluation import (
    RankResult,
    auto_block_size,
    evaluate_rank,
    evaluate_rank_from_features,
)

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


def random_labels(size: ProblemSize, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``(q_pids, g_pids, q_camids, g_camids)``, int64; gallery distractors have pid 0."""
    g_pids = rng.integers(1, size.num_ids + 1, size=size.num_gallery)
    g_pids[: size.num_distractors] = 0
    q_pids = rng.integers(1, size.num_ids + 1, size=size.num_query)
    q_camids = rng.integers(0, size.num_cameras, size=size.num_query)
    g_camids = rng.integers(0, size.num_cameras, size=size.num_gallery)
    return q_pids, g_pids, q_camids, g_camids


def random_distmat(size: ProblemSize, rng: np.random.Generator, rows: int = 256) -> np.ndarray:
    """``(num_query, num_gallery)`` float32 uniform distances, filled block by block in place."""
    distmat = np.empty((size.num_query, size.num_gallery), dtype=np.float32)
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


def measure(run: Callable[[], RankResult]) -> tuple[RankResult, float, float, float]:
    """``(result, seconds, traced peak MiB, RSS peak above the pre-call RSS MiB)``."""
    gc.collect()
    can_reset = _reset_peak_rss()
    rss_before = _resident_bytes("VmRSS") or 0
    tracemalloc.start()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    peak = _resident_bytes("VmHWM") if can_reset else None
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result, seconds, traced_peak / MIB, max(peak - rss_before, 0) / MIB


def run_size(name: str, args: argparse.Namespace) -> list[tuple]:
    """Benchmark rows for one problem size: from a distmat, then (optionally) from features."""
    size, rng = SIZES[name], np.random.default_rng(args.seed)
    labels = random_labels(size, rng)
    block = args.block_size or auto_block_size(size.num_gallery)
    shape = f"{size.num_query} x {size.num_gallery}"
    distmat = random_distmat(size, rng)
    run = lambda: evaluate_rank(distmat, *labels, block_size=args.block_size)  # noqa: E731
    rows = [(name, "distmat", shape, block, *measure(run))]
    del distmat, run
    if args.dim > 0:
        generator = torch.Generator().manual_seed(args.seed)
        qf = torch.randn(size.num_query, args.dim, generator=generator)
        gf = torch.randn(size.num_gallery, args.dim, generator=generator)
        run = lambda: evaluate_rank_from_features(  # noqa: E731
            qf, gf, *labels, metric="euclidean", block_size=args.block_size
        )
        rows.append((name, f"features D={args.dim}", shape, block, *measure(run)))
    return rows


def print_table(rows: list[tuple]) -> None:
    header = f"{'size':<11} {'input':<15} {'Q x G':<15} {'block':>5} {'time s':>8} "
    header += f"{'traced MiB':>10} {'RSS+ MiB':>9} {'rank1':>6} {'mAP':>6} {'mINP':>6}"
    print(header)
    for name, kind, shape, block, result, seconds, traced, rss in rows:
        print(
            f"{name:<11} {kind:<15} {shape:<15} {block:>5} {seconds:>8.1f} {traced:>10.0f} "
            f"{rss:>9.0f} {result.rank(1):>6.3f} {result.mAP:>6.3f} {result.mINP:>6.3f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["market1501"])
    parser.add_argument("--dim", type=int, default=512, help="feature size D; 0 skips features")
    parser.add_argument("--block-size", type=int, default=None, help="default: automatic")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}")
    rows = [row for name in args.sizes for row in run_size(name, args)]
    print_table(rows)


if __name__ == "__main__":
    main()
