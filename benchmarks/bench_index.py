"""Gallery index at scale: build time, memory, disk, query latency and recall@10 per index kind.

Synthetic mode (default): ``--n`` L2-normalised ``--dim``-d vectors with the structure of ReID
embeddings (identities of 4 views in appearance groups of 25 identities; cosine ~0.8 within an
identity, ~0.5 within a group, ~0 across), added in chunks of ``--chunk`` inside one
``GalleryIndex.batch()`` (one commit). Queries are new noisy views of ``--queries`` random gallery
entries. Recall@10 is measured against exact brute force over the stored vectors (numpy).

Each kind runs in its own process, so memory is its own. Reported per kind:

* build: create + every add + the commit (training included), wall clock seconds;
* build RSS: peak resident set (VmHWM) of the building process, GiB (includes the memory-mapped
  vectors file pages that were touched);
* disk: size of the index folder, GiB;
* open: ``GalleryIndex.open`` wall clock seconds; serve RSS: peak resident set while opening and
  searching (VmHWM reset through /proc/self/clear_refs after the build);
* single: median / p95 latency of one-query searches, ms; batch: one call with all queries,
  ms per query;
* recall@10 against exact search.

Real-features mode: ``--cuhk01 DIR`` embeds every CUHK01 image with ``--checkpoint CKPT`` (a
reidkit training checkpoint) or ``--model NAME --weights FILE`` (default: the ImageNet MobileNetV2
in ../shared/weights), builds each kind on all images and reports recall@10 against the flat
index, for plain search and for cross-camera search (each query's own camera excluded).

Usage::

    python benchmarks/bench_index.py --n 1000000 --dim 512 --kinds flat ivf ivfpq hnsw
    python benchmarks/bench_index.py --n 1000000 --param ivf.nlist=4096 --param hnsw.M=16
    python benchmarks/bench_index.py --cuhk01 ../shared/data/CUHK01/campus --checkpoint runs/cuhk01/last.pt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reidkit.index import EntryMeta, GalleryIndex, IndexManifest

GIB = 2**30
PER_ID, IDS_PER_GROUP = 4, 25
DEFAULT_PARAMS = {
    "flat": {},
    "ivf": {"nlist": 2048, "nprobe": 32},
    "ivfpq": {"nlist": 2048, "nprobe": 32, "m": 64, "nbits": 8, "refine": 4},
    "hnsw": {"M": 32, "ef_construction": 40, "ef_search": 64},
}
SYNTHETIC_MANIFEST = IndexManifest("synthetic", "0" * 64, (256, 128))


# ---- synthetic data ----


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_chunk(start: int, stop: int, dim: int, num_groups: int, seed: int = 0) -> np.ndarray:
    """Rows ``start..stop-1`` of the synthetic gallery, ``(stop - start, dim)`` float32 (start, stop multiples of 4)."""
    groups = _unit(np.random.default_rng(seed).standard_normal((num_groups, dim), dtype=np.float32))
    rng = np.random.default_rng([seed, start])
    ids = np.arange(start // PER_ID, (stop + PER_ID - 1) // PER_ID)
    centres = _unit(groups[(ids // IDS_PER_GROUP) % num_groups] + _unit(rng.standard_normal((len(ids), dim), dtype=np.float32)))
    rows = np.arange(start, stop) // PER_ID - ids[0]
    return _unit(centres[rows] + 0.5 * _unit(rng.standard_normal((stop - start, dim), dtype=np.float32)))


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int, block: int = 131072) -> np.ndarray:
    """Brute-force top-k ids by inner product over ``vectors (N, D)`` (memory-mapped), in blocks."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(vectors), block):
        scores = queries @ np.asarray(vectors[start : start + block]).T
        ids = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        best_s = np.concatenate([best_s, scores], axis=1)
        best_i = np.concatenate([best_i, ids], axis=1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / k for f, e in zip(found, exact)]))


# ---- memory ----


def peak_rss_gib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def folder_gib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / GIB


# ---- one kind, synthetic (runs in its own process) ----


def run_synthetic_kind(args, kind: str, params: dict) -> dict:
    folder = Path(args.workdir) / f"index-{kind}"
    shutil.rmtree(folder, ignore_errors=True)
    num_groups = max(1, args.n // (PER_ID * IDS_PER_GROUP))
    start = time.perf_counter()
    index = GalleryIndex.create(folder, args.dim, SYNTHETIC_MANIFEST, kind=kind, **params)
    with index.batch():
        for lo in range(0, args.n, args.chunk):
            hi = min(args.n, lo + args.chunk)
            x = synthetic_chunk(lo, hi, args.dim, num_groups)
            index.add(x, [EntryMeta(path=f"synthetic/{i:08d}.jpg", camid=i % 6) for i in range(lo, hi)])
    build_s = time.perf_counter() - start
    out = {"kind": kind, "params": index.info().state.params, "build_s": build_s, "build_rss_gib": peak_rss_gib()}
    index.close()
    del index
    reset_peak_rss()
    start = time.perf_counter()
    index = GalleryIndex.open(folder)
    out["open_s"] = time.perf_counter() - start
    out["disk_gib"] = folder_gib(folder)
    rng = np.random.default_rng(1)
    picks = rng.choice(args.n, args.queries, replace=False)
    queries = _unit(index.features(picks) + 0.3 * _unit(rng.standard_normal((args.queries, args.dim), dtype=np.float32)))
    out.update(measure_search(index, queries, args.topk))
    out["serve_rss_gib"] = peak_rss_gib()
    vectors = np.memmap(folder / "vectors.f32", np.float32, "r").reshape(-1, args.dim)
    out["recall"] = recall_at(out.pop("ids"), exact_topk(queries, vectors, args.topk))
    if not args.keep:
        index.close()
        shutil.rmtree(folder, ignore_errors=True)
    return out


def measure_search(index: GalleryIndex, queries: np.ndarray, topk: int) -> dict:
    index.search(queries[:1], topk=topk)  # warm-up
    single = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], topk=topk)
        single.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    result = index.search(queries, topk=topk)
    batch_ms = (time.perf_counter() - start) * 1000 / len(queries)
    return {"single_ms": float(np.median(single)), "single_p95_ms": float(np.percentile(single, 95)),
            "batch_ms_per_query": batch_ms, "ids": result.ids}


# ---- real features ----


def embed_cuhk01(args) -> tuple[np.ndarray, np.ndarray, IndexManifest]:
    import torch

    from reidkit.data.base import read_image
    from reidkit.data.transforms import TransformConfig, build_transforms

    if args.checkpoint:
        from reidkit.engine.checkpoint import model_from_checkpoint

        model, ckpt = model_from_checkpoint(args.checkpoint)
        data = ckpt["config"]["data"]
        size, name = (data["height"], data["width"]), ckpt["model_name"]
    else:
        from reidkit.models import create_model

        model, size, name = create_model(args.model, pretrained=args.weights).eval(), tuple(args.input_size), args.model
    paths = sorted(Path(args.cuhk01).glob("*.png"))
    if not paths:
        raise SystemExit(f"no CUHK01 images (*.png) in {args.cuhk01}")
    transform = build_transforms(TransformConfig(height=size[0], width=size[1]), train=False)
    feats = []
    with torch.inference_mode():
        for lo in range(0, len(paths), 64):
            batch = torch.stack([transform(read_image(str(p))) for p in paths[lo : lo + 64]])
            feats.append(model(batch).float().numpy())
    camids = np.array([int(p.name[4:7]) // 3 for p in paths])  # PPPPNNN: views 1-2 camera A, 3-4 camera B
    return np.concatenate(feats), camids, IndexManifest.for_model(model, name, size)


def run_cuhk01(args, kinds: list[str], params: dict) -> None:
    t = time.perf_counter()
    features, camids, manifest = embed_cuhk01(args)
    print(f"embedded {len(features)} CUHK01 images with {manifest.describe()} in {time.perf_counter() - t:.0f} s")
    entries = [EntryMeta(path=str(i), camid=int(c)) for i, c in enumerate(camids)]
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    exact = GalleryIndex.create(work / "flat", features.shape[1], manifest)
    exact.add(features, entries)
    plain_ref = exact.search(features, topk=args.topk).ids
    cross_ref = exact.search(features, topk=args.topk, query_camids=camids).ids
    print(f"{'kind':6} {'params':48} {'recall@10':>9} {'cross-camera':>12}")
    for kind in kinds:
        p = {**params[kind], "nlist": args.cuhk01_nlist} if kind in ("ivf", "ivfpq") else params[kind]
        index = GalleryIndex.create(work / kind, features.shape[1], manifest, kind=kind, **p)
        index.add(features, entries)
        plain = recall_at(index.search(features, topk=args.topk).ids, plain_ref)
        cross = recall_at(index.search(features, topk=args.topk, query_camids=camids).ids, cross_ref)
        print(f"{kind:6} {json.dumps(index.info().state.params):48} {plain:9.4f} {cross:12.4f}")
    shutil.rmtree(work, ignore_errors=True)


# ---- driver ----


def parse_params(values: list[str], kinds: list[str]) -> dict:
    params = {kind: dict(DEFAULT_PARAMS[kind]) for kind in kinds}
    for item in values:
        key, _, value = item.partition("=")
        kind, _, name = key.partition(".")
        if kind not in params or not name or not value:
            raise SystemExit(f"--param {item!r}: expected KIND.NAME=VALUE with KIND in {kinds}")
        params[kind][name] = int(value)
    return params


def describe_machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import faiss

    return f"{cpu}, {len(os.sched_getaffinity(0))} cores usable, faiss {faiss.__version__}, numpy {np.__version__}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery size (synthetic)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "ivfpq", "hnsw"], choices=list(DEFAULT_PARAMS))
    parser.add_argument("--param", action="append", default=[], help="KIND.NAME=VALUE, e.g. ivf.nlist=4096")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=100_000, help="vectors per add() inside the build batch")
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where the index folders are built")
    parser.add_argument("--keep", action="store_true", help="keep the built index folders")
    parser.add_argument("--cuhk01", help="CUHK01 campus folder: measure recall on real features instead")
    parser.add_argument("--cuhk01-nlist", type=int, default=64, help="nlist of ivf/ivfpq on CUHK01 (3884 images)")
    parser.add_argument("--checkpoint", help="reidkit checkpoint embedding the CUHK01 images")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--weights", default=str(Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2_imagenet_features.pth"))
    parser.add_argument("--input-size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.chunk -= args.chunk % PER_ID
    params = parse_params(args.param, args.kinds)
    if args.worker:
        print(json.dumps(run_synthetic_kind(args, args.worker, params[args.worker])))
        return
    print(describe_machine())
    if args.cuhk01:
        return run_cuhk01(args, args.kinds, params)
    print(f"synthetic: n={args.n:,} dim={args.dim} queries={args.queries} topk={args.topk}")
    header = (f"{'kind':6} {'build s':>8} {'build RSS':>9} {'disk':>6} {'open s':>7} {'serve RSS':>9} "
              f"{'single ms':>9} {'p95 ms':>7} {'batch ms/q':>10} {'recall@10':>9}  params")
    print(header)
    for kind in args.kinds:
        cmd = [sys.executable, __file__, "--worker", kind, *sys.argv[1:]] if argv is None else None
        if cmd is None:
            raise SystemExit("run from the command line")
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{kind:6} failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{kind:6} {r['build_s']:8.1f} {r['build_rss_gib']:8.2f}G {r['disk_gib']:5.2f}G {r['open_s']:7.2f} "
              f"{r['serve_rss_gib']:8.2f}G {r['single_ms']:9.2f} {r['single_p95_ms']:7.2f} "
              f"{r['batch_ms_per_query']:10.3f} {r['recall']:9.4f}  {json.dumps(r['params'])}", flush=True)


if __name__ == "__main__":
    main()
