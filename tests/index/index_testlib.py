"""Helpers of the gallery-index tests (imported by the test modules; conftest puts this folder on sys.path)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from reidkit.index import EntryMeta, IndexManifest

MANIFEST = IndexManifest("test_model", hashlib.sha256(b"weights").hexdigest(), (256, 128))


def clustered_features(num: int, dim: int, seed: int = 0, per_id: int = 4, ids_per_group: int = 25) -> np.ndarray:
    """``(num, D)`` float32 L2-normalised features with the structure of ReID embeddings.

    Identities belong to appearance groups (similar clothing); every ``per_id`` consecutive rows
    are noisy views of one identity. Cosine similarity: ~0.8 within an identity, ~0.5 within a
    group, ~0 across groups.
    """
    rng = np.random.default_rng(seed)
    num_ids = num // per_id + 1
    groups = _unit(rng.standard_normal((num_ids // ids_per_group + 1, dim)))
    ids = _unit(groups[np.arange(num_ids) // ids_per_group] + _unit(rng.standard_normal((num_ids, dim))))
    x = ids[np.arange(num) // per_id] + 0.5 * _unit(rng.standard_normal((num, dim)))
    return _unit(x).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def entries_for(num: int, start: int = 0, cameras: int = 3) -> list[EntryMeta]:
    return [EntryMeta(path=f"img/{i:06d}.jpg", pid=i // 4, camid=i % cameras, timestamp=1000.0 + i,
                      track_id=i // 2, tag="a" if i % 2 else "b") for i in range(start, start + num)]


def brute_force_topk(queries: np.ndarray, gallery: np.ndarray, ids: np.ndarray, k: int):
    """Plain reference: every inner product, sorted by (-score, id)."""
    scores = queries @ gallery.T
    out_ids, out_scores = [], []
    for row in scores:
        order = np.lexsort((ids, -row))[:k]
        out_ids.append(ids[order])
        out_scores.append(row[order])
    return np.array(out_ids), np.array(out_scores, dtype=np.float32)


def folder_snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` (SQLite's -wal/-shm side files and the lock excluded)."""
    skip = ("-wal", "-shm", "writer.lock")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(skip)}


# ---- the crash scenario shared by tests/index/test_crash.py and the child processes it kills ----

CRASH_DIM = 32
CRASH_BATCH = 300


def crash_plan(steps: int) -> list[tuple]:
    """A deterministic sequence of writes: ``("add", first_id, n)``, ``("remove", ids)``,
    ``("batch", first_id, n, ids)`` (add + remove in one generation), ``("rebuild",)``."""
    plan, next_id, live = [], 0, []
    for step in range(steps):
        if step % 4 in (0, 1) or not live:
            plan.append(("add", next_id, CRASH_BATCH))
            live += range(next_id, next_id + CRASH_BATCH)
            next_id += CRASH_BATCH
        elif step % 4 == 2:
            gone = live[step % 5 :: 7]
            plan.append(("remove", gone))
            live = [i for i in live if i not in set(gone)]
        elif step % 8 == 3:
            gone = live[1::9]
            plan.append(("batch", next_id, CRASH_BATCH // 2, gone))
            live = [i for i in live if i not in set(gone)] + list(range(next_id, next_id + CRASH_BATCH // 2))
            next_id += CRASH_BATCH // 2
        else:
            plan.append(("rebuild",))
    return plan


def crash_vectors(first_id: int, n: int) -> np.ndarray:
    """The vectors of ids ``first_id .. first_id + n - 1`` (a function of the id alone)."""
    return clustered_features(n, CRASH_DIM, seed=first_id)


def crash_states(plan: list[tuple]) -> list[dict[int, str]]:
    """``states[k]``: id -> path after the first k writes of ``plan``."""
    states, live = [{}], {}
    for op in plan:
        live = dict(live)
        if op[0] in ("add", "batch"):
            live.update({i: f"img/{i:06d}.jpg" for i in range(op[1], op[1] + op[2])})
        if op[0] in ("remove", "batch"):
            for i in op[-1]:
                del live[i]
        states.append(live)
    return states


def crash_vector_table(plan: list[tuple]) -> np.ndarray:
    """``(next_id, D)``: row i = the vector id i is added with."""
    adds = [op for op in plan if op[0] in ("add", "batch")]
    return np.concatenate([crash_vectors(op[1], op[2]) for op in adds])


CURRENT_OP = -1  # index in the plan of the write being applied (stage-kill patches read it)


def apply_crash_plan(folder: str, plan: list[tuple], pause: float = 0.0) -> None:
    """Run ``plan`` against the index in ``folder`` (what the killed child process does),
    sleeping ``pause`` seconds between writes."""
    global CURRENT_OP
    import time

    from reidkit.index import GalleryIndex

    index = GalleryIndex.open(folder)
    print("ready", flush=True)
    for CURRENT_OP, op in enumerate(plan):
        time.sleep(pause)
        if op[0] == "add":
            index.add(crash_vectors(op[1], op[2]), entries_for(op[2], start=op[1]))
        elif op[0] == "remove":
            index.remove(op[1])
        elif op[0] == "batch":
            with index.batch():
                index.add(crash_vectors(op[1], op[2]), entries_for(op[2], start=op[1]))
                index.remove(op[3])
        else:
            index.rebuild()
    print("done", flush=True)
