"""kill -9 of a writer at any moment leaves the old or the new index, never a broken one.

A child process applies a fixed plan of writes (adds, removes, a batch, rebuilds) to an index
and is killed with SIGKILL, either at a named stage of a commit (by patching the function that
stage runs) or after a random delay. The index must then open, be consistent (SQLite count ==
manifest count == faiss count; stored vectors equal the added ones) and hold exactly one of the
plan's intermediate states; the next write must succeed and clean up what the killed one left.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from index_testlib import (  # noqa: E402
    CRASH_DIM,
    MANIFEST,
    crash_plan,
    crash_states,
    crash_vector_table,
    crash_vectors,
    entries_for,
)

from reidkit.index import GalleryIndex  # noqa: E402

LIB = str(Path(__file__).parent)
PLAN = crash_plan(8)
STATES = crash_states(PLAN)
VECTORS = crash_vector_table(PLAN)
KILLED_OP = 3  # the batch write (add + remove in one generation)

_KILL_PATCH = """
import importlib, os, signal, index_testlib
def _patch(module, attr, when, match=None):
    owner = importlib.import_module(module)
    parts = attr.split(".")
    for part in parts[:-1]:
        owner = getattr(owner, part)
    original = getattr(owner, parts[-1])
    def wrapper(*args, **kwargs):
        hit = index_testlib.CURRENT_OP == {op} and (match is None or str(args[-1]).endswith(match))
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(*args, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(owner, parts[-1], wrapper)
_patch({module!r}, {attr!r}, {when!r}, {match!r})
"""

# stage -> (module, attribute, before/after, argument suffix, state index the index must hold)
STAGES = {
    "vectors appended": ("reidkit.index.store", "VectorFile.write_rows", "after", None, KILLED_OP),
    "faiss file renamed": ("reidkit.index.gallery", "replace_atomically", "after", None, KILLED_OP),
    "sqlite about to commit": ("reidkit.index.metadata", "MetadataStore.commit", "before", None, KILLED_OP),
    "sqlite committed": ("reidkit.index.metadata", "MetadataStore.commit", "after", None, KILLED_OP),
    "manifest temp file written": ("os", "replace", "before", "manifest.json", KILLED_OP),
    "manifest renamed": ("reidkit.index.gallery", "write_text_atomically", "after", None, KILLED_OP + 1),
}


def _create(folder: Path, kind: str) -> None:
    GalleryIndex.create(folder, CRASH_DIM, MANIFEST, kind=kind, **({"M": 8} if kind == "hnsw" else {})).close()


def _start_child(folder: Path, patch: str = "", pause: float = 0.0) -> subprocess.Popen:
    code = (f"import sys\nsys.path.insert(0, {LIB!r})\n{patch}\n"
            f"from index_testlib import apply_crash_plan, crash_plan\n"
            f"apply_crash_plan({str(folder)!r}, crash_plan({len(PLAN)}), pause={pause})\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check(folder: Path, kind: str) -> list[int]:
    """Open and check the index; return the plan states it equals."""
    index = GalleryIndex.open(folder)
    entries = index.list_entries(limit=10000).entries
    got = {e.id: e.path for e in entries}
    matches = [k for k, state in enumerate(STATES) if state == got]
    assert matches, f"the index holds none of the plan's states ({len(got)} entries)"
    info = index.info()
    assert info.state.count == len(index) == len(got)
    index.verify()  # checksums, faiss vs manifest vs SQLite: all consistent after the kill
    assert info.faiss_ntotal == len(got) if kind != "hnsw" else info.faiss_ntotal >= len(got)
    if got:
        ids = np.array(sorted(got))
        np.testing.assert_allclose(index.features(ids), VECTORS[ids], atol=1e-6)
        hits = index.search(VECTORS[ids[:20]], topk=3)
        assert np.isin(hits.ids[hits.ids >= 0], ids).all()
        if kind == "flat":
            np.testing.assert_array_equal(hits.ids[:, 0], ids[:20])
    return matches


def _write_after_crash(folder: Path, kind: str) -> None:
    """The next writer succeeds and leaves no leftovers of the killed one."""
    index = GalleryIndex.open(folder)
    before, next_id = len(index), index.info().state.next_id
    new = index.add(crash_vectors(10_000, 5), entries_for(5, start=10_000))
    np.testing.assert_array_equal(new, np.arange(next_id, next_id + 5))
    reopened = GalleryIndex.open(folder)
    assert len(reopened) == before + 5
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    assert len([n for n in names if n.startswith("faiss-")]) == (0 if kind == "flat" else 1), names
    assert (folder / "vectors.f32").stat().st_size == (next_id + 5) * CRASH_DIM * 4


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_at_each_commit_stage(tmp_path, kind, stage):
    module, attr, when, match, expected = STAGES[stage]
    if kind == "flat" and attr == "replace_atomically":
        pytest.skip("the flat kind writes no faiss file")
    folder = tmp_path / "idx"
    _create(folder, kind)
    child = _start_child(folder, _KILL_PATCH.format(op=KILLED_OP, module=module, attr=attr, when=when, match=match))
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err
    assert expected in _check(folder, kind)
    _write_after_crash(folder, kind)


@pytest.mark.slow
def test_kill_at_random_moments(tmp_path):
    rng = random.Random(7)
    folder = tmp_path / "full"
    _create(folder, "hnsw")
    child = _start_child(folder)
    child.stdout.readline()
    start = time.monotonic()
    child.communicate(timeout=120)
    duration = time.monotonic() - start
    assert len(PLAN) in _check(folder, "hnsw")
    seen = set()
    for trial in range(9):
        kind = ("flat", "hnsw", "ivf")[trial % 3]
        folder = tmp_path / f"t{trial}"
        _create(folder, kind)
        child = _start_child(folder)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, duration))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        seen.update(_check(folder, kind))
        _write_after_crash(folder, kind)
    assert len(seen) >= 3  # the kills landed at different points of the plan


def test_kill_during_create_leaves_nothing(tmp_path):
    folder = tmp_path / "new"
    code = (f"import os, signal\nreal = os.replace\n"
            f"def replace(src, dst):\n"
            f"    if str(dst) == {str(folder)!r}:\n"
            f"        os.kill(os.getpid(), signal.SIGKILL)\n"
            f"    return real(src, dst)\n"
            f"os.replace = replace\n"
            f"import sys\nsys.path.insert(0, {LIB!r})\nfrom index_testlib import MANIFEST\n"
            f"from reidkit.index import GalleryIndex\nGalleryIndex.create({str(folder)!r}, 8, MANIFEST)\n")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not folder.exists() and len(list(tmp_path.glob(".new.creating-*"))) == 1
    assert len(GalleryIndex.create(folder, 8, MANIFEST)) == 0
    assert not list(tmp_path.glob(".new.creating-*"))


def test_readers_see_whole_generations_while_a_writer_commits(tmp_path):
    folder = tmp_path / "live"
    _create(folder, "hnsw")
    reader = GalleryIndex.open(folder)
    child = _start_child(folder, pause=0.05)
    assert child.stdout.readline().strip() == "ready"
    generations = set()
    while child.poll() is None or not generations:
        reader.refresh()
        got = {e.id: e.path for e in reader.list_entries(limit=10000).entries}
        assert got in STATES and len(reader) == len(got)
        if got:
            hits = reader.search(VECTORS[sorted(got)[:5]], topk=2)
            assert all(len(m) == 2 for m in hits.metadata)
        generations.add(reader.generation)
    assert child.wait() == 0
    reader.refresh()
    assert reader.list_entries(limit=10000).total == len(STATES[-1])
    assert len(generations) >= 2
