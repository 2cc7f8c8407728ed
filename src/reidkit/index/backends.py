"""The faiss side of a gallery index: the four kinds, their parameters, training and search.

All kinds score by inner product (``METRIC_INNER_PRODUCT``: larger is closer; the cosine
similarity when vectors are L2-normalised) and carry the index's stable ids (``add_with_ids``).

* ``flat``: exact search (``IndexFlatIP``). No parameters.
* ``ivf``: inverted lists (``IndexIVFFlat``). Build: ``nlist`` lists (``None``: chosen on
  training as 4 sqrt(N), at most N / 39). Search: ``nprobe`` lists visited (``None``: nlist / 4;
  ``nprobe = nlist`` is exact).
* ``ivfpq``: inverted lists of product-quantised codes (``IndexIVFPQ``). Build: ``nlist``; ``m``
  sub-quantisers (must divide D; ``None``: D / 4 or the nearest divisor, 4-d sub-vectors);
  ``nbits`` bits per code (8). Search: ``nprobe`` (nlist / 4); ``refine`` (8): the
  ``refine * topk`` best PQ candidates are re-scored exactly from the stored vectors (1: off).
* ``hnsw``: a hierarchical navigable small-world graph (``IndexHNSWFlat``). Build: ``M`` graph degree (32),
  ``ef_construction`` (40). Search: ``ef_search`` candidate-list size (256; raised to ``topk``
  when smaller).

``ivf`` and ``ivfpq`` need training (k-means, Jegou et al., TPAMI 2011, "Product quantization for
nearest neighbor search"): on at least ``nlist`` vectors (``ivfpq``: also ``2 ** nbits``); at most
``50 * nlist`` of them, drawn at random, are used. ``hnsw`` is Malkov & Yashunin, TPAMI 2018; faiss
cannot delete from it, so removed entries stay in the graph and are filtered out at search time
until :meth:`GalleryIndex.rebuild`. GPU faiss is used for searches when installed and a GPU is
visible (not for ``hnsw``, which faiss has only on CPU).

Recall depends on the data: ``benchmarks/bench_index.py`` prints recall@10 against exact search
and latency for a sweep of ``nprobe`` / ``refine`` / ``ef_search``; pick the search parameters
there (they can be changed at every :meth:`GalleryIndex.open` and search, without a rebuild).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import GalleryIndexError

try:
    import faiss
except ImportError:  # pragma: no cover - faiss is the "index" extra
    faiss = None

BUILD_PARAMS: dict[str, dict] = {
    "flat": {},
    "ivf": {"nlist": None},
    "ivfpq": {"nlist": None, "m": None, "nbits": 8},
    "hnsw": {"M": 32, "ef_construction": 40},
}
SEARCH_PARAMS: dict[str, dict] = {
    "flat": {},
    "ivf": {"nprobe": None},  # None: nlist // 4, fixed when the index is trained
    "ivfpq": {"nprobe": None, "refine": 8},
    "hnsw": {"ef_search": 256},
}
TRAINED_KINDS = ("ivf", "ivfpq")
_MAX_TRAIN_PER_LIST = 50


def require_faiss() -> None:
    """Raise ImportError with the install hint when faiss is missing.

    Threads: batched searches, adds and training use faiss's OpenMP default (``OMP_NUM_THREADS``,
    else the CPUs this process may run on); searches of fewer queries than that use one thread
    per query (:func:`threads_for`).
    """
    if faiss is None:
        raise ImportError("the gallery index needs faiss: pip install 'reidkit[index]' (faiss-cpu)")


def resolve_params(kind: str, dim: int, params: dict) -> dict:
    """Build and default search parameters of ``kind``, with defaults filled in and checked.

    Raises:
        GalleryIndexError: an unknown kind, an unknown key (the valid ones are listed), a value
            that is not a positive integer, or an ``m`` that does not divide ``dim``.
    """
    if kind not in BUILD_PARAMS:
        raise GalleryIndexError(f"unknown index kind {kind!r}; expected one of {sorted(BUILD_PARAMS)}")
    valid = {**BUILD_PARAMS[kind], **SEARCH_PARAMS[kind]}
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise GalleryIndexError(f"unknown parameter(s) {unknown} for index kind {kind!r}; valid: {sorted(valid) or 'none'}")
    merged = {**valid, **params}
    for key, value in merged.items():
        auto = value is None and valid[key] is None
        if not auto and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise GalleryIndexError(f"index parameter {key} must be a positive integer, got {value!r}")
    if kind == "ivfpq":
        merged["m"] = merged["m"] or _default_m(dim)
        if dim % merged["m"]:
            raise GalleryIndexError(f"ivfpq parameter m={merged['m']} must divide the dimension {dim}")
        if merged["nbits"] > 16:
            raise GalleryIndexError(f"ivfpq parameter nbits must be at most 16, got {merged['nbits']}")
    return merged


def check_search_params(kind: str, params: dict) -> dict:
    """Validate search-time overrides (``nprobe``, ``refine``, ``ef_search``) for ``kind``."""
    unknown = sorted(set(params) - set(SEARCH_PARAMS[kind]))
    if unknown:
        valid = sorted(SEARCH_PARAMS[kind]) or "none"
        raise GalleryIndexError(f"unknown search parameter(s) {unknown} for index kind {kind!r}; valid: {valid}")
    for key, value in params.items():
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise GalleryIndexError(f"search parameter {key} must be a positive integer, got {value!r}")
    return dict(params)


def _default_m(dim: int) -> int:
    target = max(1, dim // 4)
    return min((m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: (abs(m - target), m))


def min_train_size(kind: str, params: dict) -> int:
    """Fewest vectors :func:`train_index` accepts (``nlist``, and ``2 ** nbits`` for ivfpq)."""
    need = params["nlist"] or 1
    return max(need, 2 ** params["nbits"]) if kind == "ivfpq" else need


def new_index(kind: str, dim: int, params: dict):
    """An empty, ready-to-add faiss index of a kind that needs no training (flat, hnsw)."""
    if kind == "flat":
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = params["ef_construction"]
        return faiss.IndexIDMap(hnsw)
    raise AssertionError(kind)


def train_index(kind: str, dim: int, params: dict, vectors: np.ndarray, rows: np.ndarray | None = None, seed: int = 0):
    """Train an ``ivf`` / ``ivfpq`` index on ``vectors (N, D) float32`` (or on ``vectors[rows]``).

    Returns:
        ``(index, params)``: the trained, empty index and the parameters with ``nlist`` and
        ``nprobe`` resolved.

    Raises:
        GalleryIndexError: fewer than :func:`min_train_size` vectors.
    """
    rows = np.arange(len(vectors)) if rows is None else rows
    n = len(rows)
    params = dict(params)
    if params["nlist"] is None:
        params["nlist"] = int(min(max(1, round(4 * math.sqrt(n))), max(1, n // 39)))
    if params["nprobe"] is None:
        params["nprobe"] = max(1, params["nlist"] // 4)
    need = min_train_size(kind, params)
    if n < need:
        raise GalleryIndexError(
            f"index kind {kind!r} with nlist={params['nlist']}"
            + (f", nbits={params['nbits']}" if kind == "ivfpq" else "")
            + f" needs at least {need} vectors to train; got {n} (add more at once, call train() with more, "
            "or choose a smaller nlist)"
        )
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], params["nbits"], faiss.METRIC_INNER_PRODUCT)
    if n > _MAX_TRAIN_PER_LIST * params["nlist"]:
        rows = rows[np.sort(np.random.default_rng(seed).choice(n, _MAX_TRAIN_PER_LIST * params["nlist"], replace=False))]
    index.train(np.ascontiguousarray(vectors[rows], np.float32))
    index.own_fields = True
    quantizer.this.disown()  # the IVF index owns and frees its quantizer
    return index, params


@contextlib.contextmanager
def threads_for(num_queries: int) -> Iterator[None]:
    """Run faiss with at most ``num_queries`` OpenMP threads inside the block (this thread only).

    faiss splits searches over queries, so threads beyond the number of queries only wait; yet
    every parallel region waits for all of them to be scheduled, which costs milliseconds per
    search on a busy machine (measured: a 1-query hnsw search took 6 ms with 2 threads while
    another process kept one of the 2 cores busy, 0.18 ms with 1 thread).
    """
    most = faiss.omp_get_max_threads()
    if num_queries >= most:
        yield
        return
    faiss.omp_set_num_threads(max(1, num_queries))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(most)


def faiss_ids(index) -> np.ndarray:
    """The ids a flat/hnsw faiss index holds, ``(ntotal,) int64``."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def stored_ids(index) -> np.ndarray:
    """Every id a faiss index of any kind holds, ``(ntotal,) int64`` (IVF: list by list)."""
    if hasattr(index, "id_map"):
        return faiss_ids(index)
    lists = faiss.extract_index_ivf(index).invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(lists.nlist) if lists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def search_params(kind: str, params: dict, topk: int, selector):
    """faiss ``SearchParameters`` for one search (None when the defaults do)."""
    if kind in TRAINED_KINDS:
        return faiss.SearchParametersIVF(nprobe=params["nprobe"], sel=selector)
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(params["ef_search"], topk), sel=selector)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def bitmap_selector(allowed_ids: np.ndarray, id_space: int):
    """An ``IDSelectorBitmap`` letting through ``allowed_ids``; returns ``(selector, bitmap)``.

    The caller keeps ``bitmap`` alive as long as the selector (faiss does not copy it).
    """
    bits = np.zeros(max(id_space, 1), dtype=bool)
    bits[allowed_ids] = True
    bitmap = np.packbits(bits, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bitmap)), bitmap


def read_index(path: Path):
    return faiss.read_index(str(path))


def write_index(index, path: Path) -> None:
    faiss.write_index(index, str(path))


def to_device(index, kind: str, device: str):
    """``(search index, device name)``: a GPU copy of ``index`` when asked for/available, else ``index``.

    Raises:
        GalleryIndexError: ``device="cuda"`` but faiss has no GPU here.
    """
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "cuda" and gpus == 0:
        raise GalleryIndexError("device='cuda' asked for, but faiss sees no GPU (install faiss-gpu)")
    if device == "cpu" or gpus == 0 or kind == "hnsw" or index.ntotal == 0:
        return index, "cpu"
    try:
        return faiss.index_cpu_to_all_gpus(index), "cuda"
    except RuntimeError as err:  # e.g. a PQ code size the GPU kernels do not support
        warnings.warn(f"faiss GPU copy of the {kind} index failed ({err}); searching on CPU", stacklevel=3)
        return index, "cpu"
