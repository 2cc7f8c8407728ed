"""Time and peak memory of k-reciprocal re-ranking at Market-1501 and MSMT17 sizes.

    flock /tmp/reidkit-heavy.lock .venv/bin/python benchmarks/bench_rerank.py \
        --sizes market1501 msmt17 [--dense-reference]

Features are random 512-d L2-normalised vectors around identity centres (about 13 images per
identity, like Market-1501's test split). Each measurement runs in a fresh subprocess so that its
peak resident memory (``ru_maxrss``: the whole process, torch included) is its own; "extra" is the
peak minus the resident memory just before the call (torch, data). ``--dense-reference`` also
runs a dense numpy transcription of the authors' ``re_ranking.py`` (float32, ``(N, N)``
matrices) where it fits in memory, and compares the two results (max abs difference, and the
fraction of queries whose top-10 gallery order is the same).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

SIZES = {"market1501": (3368, 15913), "msmt17": (11659, 82161), "small": (1000, 4000)}
DENSE_LIMIT_BYTES = 16 * 2**30  # skip the dense reference when its matrices need more


def features(num_query: int, num_gallery: int, dim: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, D)``, ``(G, D)`` float32 unit vectors, ~13 per identity centre, noise norm 1.1."""
    g = torch.Generator().manual_seed(seed)
    n = num_query + num_gallery
    num_ids = max(1, n // 13)
    ids = torch.randint(0, num_ids, (n,), generator=g)
    centres = torch.randn(num_ids, dim, generator=g) / dim**0.5
    x = centres[ids]
    x.add_(torch.randn(n, dim, generator=g), alpha=1.1 / dim**0.5)
    x = torch.nn.functional.normalize(x, dim=1)
    return x[:num_query].contiguous(), x[num_query:].contiguous()


def dense_reference(qf: np.ndarray, gf: np.ndarray, k1: int = 20, k2: int = 6, lam: float = 0.3) -> np.ndarray:
    """The authors' algorithm on dense float32 matrices, as their ``re_ranking.py`` runs it."""
    x = np.concatenate([qf, gf]).astype(np.float32)
    n, q = len(x), len(qf)
    sq = (x**2).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * x @ x.T  # (N, N)
    dist = np.transpose(dist / np.max(dist, axis=0))
    v = np.zeros_like(dist)
    rank = np.argsort(dist).astype(np.int32)
    half = int(np.around(k1 / 2))
    for i in range(n):
        forward = rank[i, : k1 + 1]
        r = forward[np.where(rank[forward, : k1 + 1] == i)[0]]
        expansion = r
        for c in r:
            cf = rank[c, : half + 1]
            h = cf[np.where(rank[cf, : half + 1] == c)[0]]
            if len(np.intersect1d(h, r)) > 2 / 3 * len(h):
                expansion = np.append(expansion, h)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        v[i, expansion] = w / np.sum(w)
    dist = dist[:q]
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = v_qe
    del rank
    inverted = [np.where(v[:, j] != 0)[0] for j in range(n)]
    jaccard = np.zeros_like(dist)
    for i in range(q):
        shared = np.zeros(n, dtype=np.float32)
        nonzero = np.where(v[i] != 0)[0]
        for j in nonzero:
            shared[inverted[j]] += np.minimum(v[i, j], v[inverted[j], j])
        jaccard[i] = 1 - shared / (2 - shared)
    return (jaccard * (1 - lam) + dist * lam)[:, q:]


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(size: str, method: str, output: str | None, block_size: int | None) -> None:
    """Run one measurement and print one JSON line."""
    from reidkit.evaluation import re_ranking

    qf, gf = features(*SIZES[size])
    before = rss_bytes()
    start = time.perf_counter()
    if method == "sparse":
        result = re_ranking(qf, gf, block_size=block_size).numpy()
    else:
        result = dense_reference(qf.numpy(), gf.numpy())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if output:
        np.save(output, result)
    print(json.dumps({"seconds": seconds, "peak": peak, "before": before}))


def measure(size: str, method: str, output: str | None, block_size: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", size, method, "--save", output or ""]
    if block_size:
        cmd += ["--block-size", str(block_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(sparse_path: str, dense_path: str) -> str:
    ours, ref = np.load(sparse_path), np.load(dense_path)
    diff = float(np.abs(ours - ref).max())
    same = (np.argsort(ours, axis=1, kind="stable")[:, :10] == np.argsort(ref, axis=1, kind="stable")[:, :10]).all(1)
    return f"max |sparse - dense| = {diff:.2e}, same top-10 order for {same.mean():.4f} of queries"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["market1501"], choices=sorted(SIZES))
    parser.add_argument("--dense-reference", action="store_true")
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--save", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.save or None, args.block_size)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            q, g = SIZES[size]
            n = q + g
            dense = args.dense_reference and 3 * 4 * n * n <= DENSE_LIMIT_BYTES
            paths = {m: os.path.join(tmp, f"{size}_{m}.npy") if dense else None for m in ("sparse", "dense")}
            for method in ("sparse", "dense") if dense else ("sparse",):
                r = measure(size, method, paths[method], args.block_size)
                print(
                    f"{size:10s} Q={q} G={g} N={n} {method:6s}: {r['seconds']:7.2f} s, "
                    f"peak RSS {r['peak'] / 2**30:.2f} GiB (extra {(r['peak'] - r['before']) / 2**30:.2f} GiB)",
                    flush=True,
                )
            if dense:
                print(f"{size:10s} {compare(paths['sparse'], paths['dense'])}")
            elif args.dense_reference:
                print(f"{size:10s} dense reference skipped: it needs ~{3 * 4 * n * n / 2**30:.0f} GiB")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
