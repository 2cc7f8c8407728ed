"""What the integrity checks add to ``GalleryIndex.open`` (and what ``verify()`` costs).

Builds one index per kind from ``--n`` random L2-normalised ``--dim``-d vectors, then times
``GalleryIndex.open`` on it as written (checksums in the manifest: open checks the faiss file,
and for ``flat`` the vectors it rebuilds from) and on the same folder with the checksums removed
from ``manifest.json`` (as an index written before reidkit recorded them: open skips the checks).
The difference is the checks' cost; "read MB" is the size of the file open checks. Files are in
the page cache (one untimed open first); each figure is the median of ``--repeat`` opens, in
seconds. ``verify()`` (which reads every file) is timed once.

Usage::

    python benchmarks/bench_index_open.py --n 100000 --dim 512 --kinds flat ivf hnsw
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from reidkit.index import EntryMeta, GalleryIndex, IndexManifest

PARAMS = {"flat": {}, "ivf": {"nlist": 256}, "ivfpq": {"nlist": 256}, "hnsw": {"M": 16}}
CHUNK = 50_000


def build(folder: Path, kind: str, n: int, dim: int) -> None:
    manifest = IndexManifest("bench", hashlib.sha256(b"bench").hexdigest(), (256, 128))
    rng = np.random.default_rng(0)
    with GalleryIndex.create(folder, dim, manifest, kind=kind, **PARAMS[kind]) as index, index.batch():
        for start in range(0, n, CHUNK):
            x = rng.standard_normal((min(CHUNK, n - start), dim), dtype=np.float32)  # (B, D)
            index.add(x, [EntryMeta(path=f"{i}.jpg") for i in range(start, start + len(x))])


def median_open(folder: Path, repeat: int) -> float:
    GalleryIndex.open(folder).close()  # warm the page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        GalleryIndex.open(folder).close()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def strip_checksums(folder: Path) -> None:
    path = folder / "manifest.json"
    body = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in body.items() if k not in ("faiss_crc32", "vectors_crc32")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"], choices=sorted(PARAMS))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.n} x {args.dim}, {platform.processor() or platform.machine()}, median of {args.repeat} opens (s)")
    print(f"{'kind':6} {'read MB':>8} {'checked':>8} {'unchecked':>9} {'added':>7} {'verify':>7}")
    for kind in args.kinds:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / kind
            build(folder, kind, args.n, args.dim)
            read = folder / "vectors.f32" if kind == "flat" else next(folder.glob("faiss-*.index"))  # what open checks
            size = read.stat().st_size
            checked = median_open(folder, args.repeat)
            with GalleryIndex.open(folder) as index:
                start = time.perf_counter()
                index.verify()
                verify = time.perf_counter() - start
            strip_checksums(folder)
            unchecked = median_open(folder, args.repeat)
            print(f"{kind:6} {size / 2**20:8.0f} {checked:8.3f} {unchecked:9.3f} {checked - unchecked:+7.3f} {verify:7.3f}")


if __name__ == "__main__":
    main()
