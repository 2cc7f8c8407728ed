"""Gallery index at scale: build time, memory, disk, query latency and recall@10 per index kind.

Synthetic mode (default): ``--n`` L2-normalised ``--dim``-d vectors with the structure of ReID
embeddings (:class:`SyntheticGallery`: identities of 4 views in appearance groups of 25
identities, in a ``--latent-dim`` subspace plus ambient noise), added in chunks of ``--chunk``
inside one ``GalleryIndex.batch()`` (one commit). Queries are unseen views of the identities of
``--queries`` random gallery entries. Recall@10 is measured against exact brute force over the
stored vectors (numpy). Each built index is searched with every setting of :func:`sweeps`.

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

from reidkit.index import BUILD_PARAMS, SEARCH_PARAMS, EntryMeta, GalleryIndex, IndexManifest

GIB = 2**30
PER_ID, IDS_PER_GROUP = 4, 25
IVF_KINDS = ("ivf", "ivfpq")


def sweeps(kind: str, nlist: int) -> list[dict]:
    """Search settings measured on each built index (the library defaults among them)."""
    if kind == "ivf":
        return [{"nprobe": max(1, nlist // f)} for f in (32, 16, 8, 4, 2)]
    if kind == "ivfpq":
        settings = ((16, 8), (8, 8), (4, 8), (4, 16), (4, 32), (2, 32))
        return [{"nprobe": max(1, nlist // f), "refine": r} for f, r in settings]
    if kind == "hnsw":
        return [{"ef_search": e} for e in (128, 256, 512)]
    return [{}]


CUHK01_SWEEPS = {  # 3884 images: nlist is ~100, so smaller nprobe values
    "ivf": [{"nprobe": n} for n in (4, 8, 16, 32)],
    "ivfpq": [{"nprobe": n, "refine": r} for n, r in ((8, 4), (16, 4), (16, 8), (32, 8))],
    "hnsw": [{"ef_search": e} for e in (64, 128, 256)],
}
SYNTHETIC_MANIFEST = IndexManifest("synthetic", "0" * 64, (256, 128))


# ---- synthetic data ----


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class SyntheticGallery:
    """Deterministic ReID-like vectors: identities of 4 views in appearance groups of 25 identities.

    The structure lives in a ``latent``-dimensional space (deep features have a low intrinsic
    dimension; ``latent = dim`` gives isotropic, the hardest case for approximate search), mapped
    into ``dim`` dimensions by a fixed random orthonormal projection, plus ambient noise of relative
    norm ``ambient``. In the latent space: cosine ~0.8 between views of one identity, ~0.4 within a
    group, ~0 across groups.
    """

    BLOCK = 4096  # identities generated together (a function of the block index alone)

    def __init__(self, n: int, dim: int, latent: int, ambient: float = 0.2, seed: int = 0):
        self.n, self.dim, self.latent, self.ambient, self.seed = n, dim, latent, ambient, seed
        rng = np.random.default_rng(seed)
        num_groups = max(1, n // (PER_ID * IDS_PER_GROUP) + 1)
        self.groups = _unit(rng.standard_normal((num_groups, latent), dtype=np.float32))
        q, _ = np.linalg.qr(rng.standard_normal((dim, latent)))
        self.projection = q.astype(np.float32)  # (dim, latent), orthonormal columns

    def _centres(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.latent), np.float32)
        for block in np.unique(ids // self.BLOCK):
            first = block * self.BLOCK
            rng = np.random.default_rng([self.seed, 1, int(block)])
            own = _unit(rng.standard_normal((self.BLOCK, self.latent), dtype=np.float32))
            centres = _unit(self.groups[(np.arange(first, first + self.BLOCK) // IDS_PER_GROUP) % len(self.groups)] + own)
            sel = ids // self.BLOCK == block
            out[sel] = centres[ids[sel] - first]
        return out

    def _views(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        latent = _unit(self._centres(rows // PER_ID) + 0.5 * _unit(rng.standard_normal((len(rows), self.latent), dtype=np.float32)))
        x = latent @ self.projection.T
        return _unit(x + self.ambient * _unit(rng.standard_normal((len(rows), self.dim), dtype=np.float32)))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Gallery rows ``start..stop-1``, ``(stop - start, dim)`` float32."""
        return self._views(np.arange(start, stop), np.random.default_rng([self.seed, 2, start]))

    def new_views(self, rows: np.ndarray, seed: int = 1) -> np.ndarray:
        """Unseen views of the identities of gallery ``rows``: the queries."""
        return self._views(np.asarray(rows), np.random.default_rng([self.seed, 3, seed]))


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
    gallery = SyntheticGallery(args.n, args.dim, min(args.latent_dim or args.dim, args.dim))
    start = time.perf_counter()
    index = GalleryIndex.create(folder, args.dim, SYNTHETIC_MANIFEST, kind=kind, **params)
    if kind in IVF_KINDS:  # train on a sample of 50 vectors per list, as faiss recommends >= 39
        index.train(gallery.rows(0, min(args.n, 50 * params["nlist"])))
    with index.batch():
        for lo in range(0, args.n, args.chunk):
            hi = min(args.n, lo + args.chunk)
            x = gallery.rows(lo, hi)
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
    queries = gallery.new_views(np.random.default_rng(1).choice(args.n, args.queries, replace=False))
    settings = args.searches.get(kind) or sweeps(kind, params.get("nlist", 0))
    defaults = {k: v for k, v in out["params"].items() if k in SEARCH_PARAMS[kind]}
    sweep = [measure_search(index, queries, args.topk, sp) for sp in (settings if args.sweep else [defaults])]
    out["serve_rss_gib"] = peak_rss_gib()
    vectors = np.memmap(folder / "vectors.f32", np.float32, "r").reshape(-1, args.dim)
    exact = exact_topk(queries, vectors, args.topk)
    for row in sweep:
        row["recall"] = recall_at(row.pop("ids"), exact)
    out["sweep"] = sweep
    if not args.keep:
        index.close()
        shutil.rmtree(folder, ignore_errors=True)
    return out


def measure_search(index: GalleryIndex, queries: np.ndarray, topk: int, search_params: dict) -> dict:
    """Latency of one-query searches and of one batched search, and the batched result ids."""
    index.search(queries[:1], topk=topk, **search_params)  # warm-up
    single = []
    for q in queries:
        start = time.perf_counter()
        index.search(q[None], topk=topk, **search_params)
        single.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    result = index.search(queries, topk=topk, **search_params)
    batch_ms = (time.perf_counter() - start) * 1000 / len(queries)
    return {"search": search_params, "single_ms": float(np.median(single)),
            "single_p95_ms": float(np.percentile(single, 95)), "batch_ms_per_query": batch_ms, "ids": result.ids}


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


def cached_cuhk01(args) -> tuple[np.ndarray, np.ndarray, IndexManifest]:
    """:func:`embed_cuhk01`, read from / written to ``--features-cache`` when given."""
    cache = Path(args.features_cache) if args.features_cache else None
    if cache and cache.is_file():
        data = np.load(cache, allow_pickle=False)
        manifest = IndexManifest(**json.loads(str(data["manifest"])))
        print(f"read {len(data['features'])} CUHK01 features of {manifest.describe()} from {cache}")
        return data["features"], data["camids"], manifest
    t = time.perf_counter()
    features, camids, manifest = embed_cuhk01(args)
    print(f"embedded {len(features)} CUHK01 images with {manifest.describe()} in {time.perf_counter() - t:.0f} s")
    if cache:
        np.savez(cache, features=features, camids=camids, manifest=json.dumps(manifest.to_dict()))
    return features, camids, manifest


def run_cuhk01(args, kinds: list[str], params: dict) -> None:
    features, camids, manifest = cached_cuhk01(args)
    entries = [EntryMeta(path=str(i), camid=int(c)) for i, c in enumerate(camids)]
    work = Path(tempfile.mkdtemp(dir=args.workdir))
    exact = GalleryIndex.create(work / "flat", features.shape[1], manifest)
    exact.add(features, entries)
    plain_ref = exact.search(features, topk=args.topk).ids
    cross_ref = exact.search(features, topk=args.topk, query_camids=camids).ids
    print(f"{'kind':6} {'search':22} {'recall@10':>9} {'cross-camera':>12}  build parameters")
    for kind in [k for k in kinds if k != "flat"]:
        build = {**params[kind], "nlist": args.cuhk01_nlist} if kind in IVF_KINDS else params[kind]
        index = GalleryIndex.create(work / kind, features.shape[1], manifest, kind=kind, **build)
        index.add(features, entries)
        for sp in CUHK01_SWEEPS[kind]:
            plain = recall_at(index.search(features, topk=args.topk, **sp).ids, plain_ref)
            cross = recall_at(index.search(features, topk=args.topk, query_camids=camids, **sp).ids, cross_ref)
            search = ",".join(f"{k}={v}" for k, v in sp.items())
            print(f"{kind:6} {search:22} {plain:9.4f} {cross:12.4f}  {json.dumps(index.info().state.params)}")
    shutil.rmtree(work, ignore_errors=True)


# ---- driver ----


def parse_params(values: list[str], kinds: list[str], nlist: int) -> dict:
    """Build parameters per kind: the library defaults, ``nlist`` for ivf kinds, ``--param`` overrides."""
    params = {kind: ({"nlist": nlist} if kind in IVF_KINDS else {}) for kind in kinds}
    for item in values:
        key, _, value = item.partition("=")
        kind, _, name = key.partition(".")
        if kind not in params or not name or not value:
            raise SystemExit(f"--param {item!r}: expected KIND.NAME=VALUE with KIND in {kinds}")
        params[kind][name] = int(value)
    return params


def parse_searches(values: list[str]) -> dict[str, list[dict]]:
    """``--search KIND:NAME=V,NAME=V`` values by kind."""
    out: dict[str, list[dict]] = {}
    for item in values:
        kind, _, body = item.partition(":")
        try:
            setting = {k: int(v) for k, v in (pair.split("=") for pair in body.split(",") if pair)}
        except ValueError:
            raise SystemExit(f"--search {item!r}: expected KIND:NAME=INT[,NAME=INT]") from None
        out.setdefault(kind, []).append(setting)
    return out


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
    parser.add_argument("--latent-dim", type=int, default=64,
                        help="intrinsic dimension of the synthetic vectors (0: --dim, isotropic)")
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "ivfpq", "hnsw"], choices=list(BUILD_PARAMS))
    parser.add_argument("--param", action="append", default=[], help="KIND.NAME=VALUE, e.g. ivf.nlist=4096")
    parser.add_argument("--nlist", type=int, help="ivf/ivfpq lists (default 4 sqrt(n))")
    parser.add_argument("--search", action="append", default=[], metavar="KIND:NAME=V[,NAME=V]",
                        help="search setting to measure instead of the sweep, e.g. ivfpq:nprobe=1000,refine=64")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=100_000, help="vectors per add() inside the build batch")
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where the index folders are built")
    parser.add_argument("--keep", action="store_true", help="keep the built index folders")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false",
                        help="measure only the default search parameters (not the sweep)")
    parser.add_argument("--cuhk01", help="CUHK01 campus folder: measure recall on real features instead")
    parser.add_argument("--cuhk01-nlist", type=int, default=None, help="nlist of ivf/ivfpq on CUHK01 (default: auto)")
    parser.add_argument("--checkpoint", help="reidkit checkpoint embedding the CUHK01 images")
    parser.add_argument("--features-cache", help=".npz file keeping the CUHK01 features between runs")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--weights", default=str(Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2_imagenet_features.pth"))
    parser.add_argument("--input-size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.chunk -= args.chunk % PER_ID
    args.searches = parse_searches(args.search)
    params = parse_params(args.param, args.kinds, args.nlist or max(1, round(4 * args.n**0.5)))
    if args.worker:
        print(json.dumps(run_synthetic_kind(args, args.worker, params[args.worker])))
        return
    print(describe_machine())
    if args.cuhk01:
        return run_cuhk01(args, args.kinds, params)
    print(f"synthetic: n={args.n:,} dim={args.dim} latent dim={min(args.latent_dim or args.dim, args.dim)} "
          f"queries={args.queries} topk={args.topk}")
    print(f"{'kind':6} {'build s':>8} {'build RSS':>9} {'disk':>6} {'open s':>7} {'serve RSS':>9}  "
          f"{'search':22} {'single ms':>9} {'p95 ms':>7} {'batch ms/q':>10} {'recall@10':>9}")
    for kind in args.kinds:
        cmd = [sys.executable, __file__, "--worker", kind, *sys.argv[1:]] if argv is None else None
        if cmd is None:
            raise SystemExit("run from the command line")
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{kind:6} failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        build = (f"{kind:6} {r['build_s']:8.1f} {r['build_rss_gib']:8.2f}G {r['disk_gib']:5.2f}G {r['open_s']:7.2f} "
                 f"{r['serve_rss_gib']:8.2f}G")
        for i, row in enumerate(r["sweep"]):
            search = ",".join(f"{k}={v}" for k, v in row["search"].items()) or "-"
            print(f"{build if i == 0 else ' ' * len(build)}  {search:22} {row['single_ms']:9.2f} "
                  f"{row['single_p95_ms']:7.2f} {row['batch_ms_per_query']:10.3f} {row['recall']:9.4f}")
        print(f"{'':6} build parameters: {json.dumps(r['params'])}", flush=True)


if __name__ == "__main__":
    main()
