"""Dataset loaders against small synthetic replicas of each official layout (built in tmp_path).

Expected lists are written down from the file names the test creates, not from the loaders.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.data import DatasetError, ReIDDataset, create_dataset, list_datasets

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _write_image(path: Path, value: int = 128, size: tuple[int, int] = (4, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path)


def _triples(items) -> list[tuple[str, int, int]]:
    return sorted((os.path.basename(s.img_path), s.pid, s.camid) for s in items)


def test_all_loaders_registered():
    assert {"market1501", "dukemtmcreid", "msmt17", "cuhk03", "cuhk01", "folder", "csv"} <= set(
        list_datasets()
    )


def test_empty_eval_still_refused_by_default():
    with pytest.raises(DatasetError, match="query split is empty"):
        ReIDDataset([("a.jpg", 1, 0)], [], [("b.jpg", 1, 0)])
    ds = ReIDDataset([("a.jpg", 5, 0)], [], [], allow_empty_eval=True)
    assert ds.train == [("a.jpg", 0, 0)] and ds.query == [] and ds.gallery == []


# ---------------------------------------------------------------------------- Market / Duke
MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg",
                           "0007_c3s3_064744_01.jpg", "0007_c6s1_000076_02.jpg",
                           "0007_c6s1_000101_01.jpg"],
    "query": ["0010_c1s1_001051_00.jpg", "0011_c5s2_000101_00.jpg"],
    "bounding_box_test": ["0010_c4s1_002101_01.jpg", "0011_c2s1_000001_02.jpg",
                          "0000_c1s1_000123_03.jpg", "-1_c3s1_000555_05.jpg"],
}


def _make_market_style(folder: Path, layout: dict[str, list[str]]) -> None:
    for split, names in layout.items():
        for name in names:
            _write_image(folder / split / name)
    (folder / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")


@pytest.mark.parametrize("sub", ["", "Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15"])
def test_market1501_layouts(tmp_path, sub):
    _make_market_style(tmp_path / sub, MARKET)
    ds = create_dataset("market1501", root=tmp_path)
    # train pids 2 and 7 relabelled to 0 and 1 (sorted), cameras shifted to 0-based
    assert _triples(ds.train) == sorted([
        ("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c2s1_000301_01.jpg", 0, 1),
        ("0007_c3s3_064744_01.jpg", 1, 2), ("0007_c6s1_000076_02.jpg", 1, 5),
        ("0007_c6s1_000101_01.jpg", 1, 5)])
    assert ds.train_pid_map == {2: 0, 7: 1}
    assert _triples(ds.query) == [("0010_c1s1_001051_00.jpg", 10, 0),
                                  ("0011_c5s2_000101_00.jpg", 11, 4)]
    # junk (-1) and distractors (0) stay in the gallery; Thumbs.db is ignored
    assert _triples(ds.gallery) == sorted([
        ("0010_c4s1_002101_01.jpg", 10, 3), ("0011_c2s1_000001_02.jpg", 11, 1),
        ("0000_c1s1_000123_03.jpg", 0, 0), ("-1_c3s1_000555_05.jpg", -1, 2)])
    assert all(os.path.isfile(s.img_path) for s in ds.train + ds.query + ds.gallery)


def test_market1501_bad_input(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        create_dataset("market1501", root=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="bounding_box_train"):
        create_dataset("market1501", root=tmp_path)  # exists, but no layout inside
    _make_market_style(tmp_path, MARKET)
    _write_image(tmp_path / "query" / "person12_cam1.jpg")
    with pytest.raises(DatasetError, match="person12_cam1.jpg"):
        create_dataset("market1501", root=tmp_path)


def test_market1501_empty_query(tmp_path):
    _make_market_style(tmp_path, {**MARKET, "query": []})
    (tmp_path / "query").mkdir()
    with pytest.raises(DatasetError, match="query split is empty"):
        create_dataset("market1501", root=tmp_path)


def test_dukemtmcreid_warns_and_loads(tmp_path):
    duke = {
        "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg",
                               "0003_c8_f0000001.jpg"],
        "query": ["0005_c2_f0046985.jpg"],
        "bounding_box_test": ["0005_c5_f0052230.jpg", "0000_c7_f0000100.jpg"],
    }
    _make_market_style(tmp_path / "DukeMTMC-reID", duke)
    with pytest.warns(UserWarning, match="withdrawn by its authors in 2019"):
        ds = create_dataset("dukemtmcreid", root=tmp_path)
    assert _triples(ds.train) == sorted([("0001_c2_f0046182.jpg", 0, 1),
                                         ("0001_c5_f0051341.jpg", 0, 4),
                                         ("0003_c8_f0000001.jpg", 1, 7)])
    assert _triples(ds.gallery) == [("0000_c7_f0000100.jpg", 0, 6), ("0005_c5_f0052230.jpg", 5, 4)]


# ---------------------------------------------------------------------------- MSMT17
MSMT_LISTS = {  # list -> (relative path, pid); camera is the third '_' field, 1-based
    "list_train.txt": [("0000/0000_000_01_0303morning_0015_0.jpg", 0),
                       ("0000/0000_001_14_0303morning_0030_1.jpg", 0),
                       ("0001/0001_000_03_0303noon_0100_0.jpg", 1)],
    "list_val.txt": [("0001/0001_001_15_0303noon_0200_2.jpg", 1)],
    "list_query.txt": [("0000/0000_000_07_0303afternoon_0001_0.jpg", 0)],
    "list_gallery.txt": [("0000/0000_002_02_0304morning_0500_0.jpg", 0),
                         ("0002/0002_000_10_0304morning_0600_0.jpg", 2)],
}


def _make_msmt(root: Path, version: str, train_dir: str, test_dir: str) -> Path:
    base = root / version
    for list_name, rows in MSMT_LISTS.items():
        image_dir = train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir
        for rel, _ in rows:
            _write_image(base / image_dir / rel)
        (base / list_name).write_text("".join(f"{rel} {pid}\n" for rel, pid in rows))
    return base


@pytest.mark.parametrize("version,train_dir,test_dir", [
    ("MSMT17_V1", "train", "test"),
    ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
    ("MSMT17_V2", "mask_train_V2", "mask_test_V2"),
])
def test_msmt17_layouts(tmp_path, version, train_dir, test_dir):
    _make_msmt(tmp_path, version, train_dir, test_dir)
    ds = create_dataset("msmt17", root=tmp_path)
    assert _triples(ds.train) == sorted([
        ("0000_000_01_0303morning_0015_0.jpg", 0, 0), ("0000_001_14_0303morning_0030_1.jpg", 0, 13),
        ("0001_000_03_0303noon_0100_0.jpg", 1, 2), ("0001_001_15_0303noon_0200_2.jpg", 1, 14)])
    assert _triples(ds.query) == [("0000_000_07_0303afternoon_0001_0.jpg", 0, 6)]
    assert _triples(ds.gallery) == [("0000_002_02_0304morning_0500_0.jpg", 0, 1),
                                    ("0002_000_10_0304morning_0600_0.jpg", 2, 9)]
    assert all(os.path.isfile(s.img_path) for s in ds.train + ds.query + ds.gallery)
    only_train = create_dataset("msmt17", root=tmp_path / version, combine_train_val=False)
    assert len(only_train.train) == 3 and "0001_001_15" not in str(only_train.train)


def test_msmt17_bad_line_names_file_and_line(tmp_path):
    base = _make_msmt(tmp_path, "MSMT17_V1", "train", "test")
    (base / "list_query.txt").write_text("0000/0000_000_07_x_0001_0.jpg 0\n0000/0000_000_07.jpg\n")
    with pytest.raises(DatasetError, match=r"list_query\.txt:2"):
        create_dataset("msmt17", root=tmp_path)
    (base / "list_query.txt").write_text("0000/0000_nocam.jpg 0\n")
    with pytest.raises(DatasetError, match=r"list_query\.txt:1.*PPPP_NNN_CC"):
        create_dataset("msmt17", root=tmp_path)
    with pytest.raises(DatasetError, match="list_train.txt"):
        create_dataset("msmt17", root=tmp_path / "MSMT17_V1" / "train")


# ---------------------------------------------------------------------------- CUHK03
def _cuhk03_images(seed: int) -> list[list[list[np.ndarray | None]]]:
    """pairs -> persons -> 10 columns (None = empty cell); each image (H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    filled = [[[0, 1, 5, 6], [0, 5, 6, 7], [2, 8]], [[0, 1, 9], [4, 5]]]  # per pair, per person
    pairs = []
    for persons in filled:
        pairs.append([[rng.integers(0, 256, (7 + c, 3 + c % 2, 3), dtype=np.uint8)
                       if c in cols else None for c in range(10)] for cols in persons])
    return pairs


def _write_cuhk03_mat(path: Path, data: dict[str, list]) -> None:
    """A MATLAB v7.3-like file: cell arrays of object references, column-major (transposed)."""
    h5py = pytest.importorskip("h5py")
    path.parent.mkdir(parents=True, exist_ok=True)
    counter = itertools.count()
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")

        def store(arr, **kw):
            return refs.create_dataset(f"r{next(counter)}", data=arr, **kw).ref

        for variant, pairs in data.items():
            pair_refs = []
            for persons in pairs:
                # MATLAB's (P, 10) cell array, stored transposed
                cell = np.empty((10, len(persons)), dtype=h5py.ref_dtype)
                for p, row in enumerate(persons):
                    for c, img in enumerate(row):
                        cell[c, p] = store(np.zeros(2, np.uint64) if img is None else img.T)
                pair_refs.append(store(cell, dtype=h5py.ref_dtype))
            top = f.create_dataset(variant, shape=(1, len(pair_refs)), dtype=h5py.ref_dtype)
            for i, ref in enumerate(pair_refs):
                top[0, i] = ref


def _cuhk03_names(pairs) -> list[tuple[str, int]]:
    """(torchreid file name, global pid) of every non-empty cell, pid numbered from 1."""
    out, pid = [], 0
    for pair, persons in enumerate(pairs, start=1):
        for person, row in enumerate(persons, start=1):
            pid += 1
            for col, img in enumerate(row, start=1):
                if img is not None:
                    out.append((f"{pair}_{person:03d}_{1 if col <= 5 else 2}_{col:02d}.png", pid))
    return out


def _write_cuhk03_split(path: Path, names: list[tuple[str, int]], train_pids: set[int], **override):
    scipy_io = pytest.importorskip("scipy.io")
    train = [i + 1 for i, (_, p) in enumerate(names) if p in train_pids]
    test = [i + 1 for i, (_, p) in enumerate(names) if p not in train_pids]
    seen, query, gallery = set(), [], []
    for i in test:  # first image of each (pid, view) is a query
        key = (names[i - 1][1], names[i - 1][0].split("_")[2])
        (gallery if key in seen else query).append(i)
        seen.add(key)
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = [n for n, _ in names]
    content = {
        "filelist": filelist, "labels": np.array([[p] for _, p in names], dtype=float),
        "camId": np.array([[int(n.split("_")[2])] for n, _ in names], dtype=float),
        "train_idx": np.array(train, dtype=float)[:, None],
        "query_idx": np.array(query, dtype=float)[:, None],
        "gallery_idx": np.array(gallery, dtype=float)[:, None],
    }
    content.update(override)
    scipy_io.savemat(path, content)
    return train, query, gallery


def _make_cuhk03(root: Path) -> dict:
    data = {"detected": _cuhk03_images(0), "labeled": _cuhk03_images(1)}
    _write_cuhk03_mat(root / "cuhk03_release" / "cuhk-03.mat", data)
    splits = {}
    for variant, pairs in data.items():
        names = _cuhk03_names(pairs)
        idx = _write_cuhk03_split(root / f"cuhk03_new_protocol_config_{variant}.mat", names, {1, 4})
        splits[variant] = (names, idx)
    return {"data": data, "splits": splits}


@pytest.mark.parametrize("variant", ["detected", "labeled"])
def test_cuhk03_extracts_and_splits(tmp_path, variant):
    made = _make_cuhk03(tmp_path)
    ds = create_dataset("cuhk03", root=tmp_path, variant=variant)
    names, (train, query, gallery) = made["splits"][variant]
    def expect(rows):  # (name, pid, view - 1) of 1-based filelist rows
        return sorted((names[i - 1][0], names[i - 1][1], int(names[i - 1][0].split("_")[2]) - 1)
                      for i in rows)

    assert _triples(ds.query) == expect(query) and _triples(ds.gallery) == expect(gallery)
    assert _triples(ds.train) == [(n, {1: 0, 4: 1}[p], c) for n, p, c in expect(train)]
    assert len(ds.train) == 4 + 3 and ds.num_train_pids == 2  # persons 1 and 4 (pair 2, person 1)
    assert all(os.path.dirname(s.img_path) == str(tmp_path / f"images_{variant}") for s in ds.query)
    # pixels survive the MATLAB column-major round trip: compare with the arrays written
    pairs = made["data"][variant]
    for name, _ in names:
        pair, person, _, col = (int(x) for x in name[:-4].split("_"))
        got = np.asarray(Image.open(tmp_path / f"images_{variant}" / name))
        np.testing.assert_array_equal(got, pairs[pair - 1][person - 1][col - 1])
    assert len(os.listdir(tmp_path / f"images_{variant}")) == len(names)  # no temp files left


def test_cuhk03_uses_extracted_images_without_mat(tmp_path):
    _make_cuhk03(tmp_path)
    first = create_dataset("cuhk03", root=tmp_path)
    png = Path(first.query[0].img_path)
    mtime = png.stat().st_mtime_ns
    os.remove(tmp_path / "cuhk03_release" / "cuhk-03.mat")  # torchreid-style copy: images only
    second = create_dataset("cuhk03", root=tmp_path)
    assert _triples(second.query) == _triples(first.query) and png.stat().st_mtime_ns == mtime
    os.remove(png)
    with pytest.raises(DatasetError, match="cuhk-03.mat"):
        create_dataset("cuhk03", root=tmp_path)


def test_cuhk03_bad_input(tmp_path, monkeypatch):
    made = _make_cuhk03(tmp_path)
    with pytest.raises(DatasetError, match="variant"):
        create_dataset("cuhk03", root=tmp_path, variant="hand")
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(ImportError, match=r"reidkit\[mat\]"):
        create_dataset("cuhk03", root=tmp_path)
    monkeypatch.undo()
    names, _ = made["splits"]["detected"]
    split = tmp_path / "cuhk03_new_protocol_config_detected.mat"
    _write_cuhk03_split(split, names, {1, 4}, query_idx=np.array([[1.0], [len(names) + 1.0]]))
    with pytest.raises(DatasetError, match=r"query_idx holds 16; expected 1-based rows 1\.\.15"):
        create_dataset("cuhk03", root=tmp_path)
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(split, {"filelist": np.array([["1_001_1_01.png"]], dtype=object)})
    with pytest.raises(DatasetError, match="lacks key"):
        create_dataset("cuhk03", root=tmp_path)


# ---------------------------------------------------------------------------- CUHK01
def _make_campus(folder: Path, num_ids: int = 20) -> None:
    for pid in range(1, num_ids + 1):
        for n in range(1, 5):
            _write_image(folder / f"{pid:04d}{n:03d}.png", size=(2, 2))


def test_cuhk01_protocol_sizes_and_cameras(tmp_path):
    _make_campus(tmp_path / "campus")
    ds = create_dataset("cuhk01", root=tmp_path, num_test_ids=8, split_id=2)
    test_ids = {s.pid for s in ds.query}
    assert len(test_ids) == 8 and {s.pid for s in ds.gallery} == test_ids
    assert ds.num_train_pids == 12 and len(ds.train) == 48
    assert not test_ids & set(ds.train_pid_map)  # disjoint identities
    assert set(ds.train_pid_map) | test_ids == set(range(1, 21))
    assert {s.camid for s in ds.query} == {0} and {s.camid for s in ds.gallery} == {1}
    assert Counter(os.path.basename(s.img_path)[4:7] for s in ds.query) == {"001": 8, "002": 8}
    assert Counter(os.path.basename(s.img_path)[4:7] for s in ds.gallery) == {"003": 8, "004": 8}
    swapped = create_dataset("cuhk01", root=tmp_path / "campus", num_test_ids=8, split_id=2,
                             query_camera="B")
    assert _triples(swapped.query) == _triples(ds.gallery)


def test_cuhk01_split_determinism(tmp_path):
    _make_campus(tmp_path)
    def test_ids(**kw):
        return sorted({s.pid for s in create_dataset("cuhk01", root=tmp_path, **kw).query})

    # golden values: the split must not change between runs, machines or releases
    assert test_ids(num_test_ids=5, split_id=0) == [3, 5, 7, 14, 20]
    assert test_ids(num_test_ids=5, split_id=1) == [2, 8, 11, 17, 19]
    assert test_ids(num_test_ids=5, split_id=0) == test_ids(num_test_ids=5, split_id=0)
    assert len({tuple(test_ids(num_test_ids=10, split_id=k)) for k in range(10)}) == 10
    assert set(test_ids(num_test_ids=5, split_id=4)) <= set(test_ids(num_test_ids=10, split_id=4))
    everything = create_dataset("cuhk01", root=tmp_path, num_test_ids=20)
    assert everything.train == [] and len(everything.query) == len(everything.gallery) == 40


@pytest.mark.parametrize("options,match", [
    ({"num_test_ids": 0}, "num_test_ids"), ({"num_test_ids": 21}, "1..20"),
    ({"split_id": 10}, "split_id"), ({"query_camera": "C"}, "query_camera"),
])
def test_cuhk01_bad_options(tmp_path, options, match):
    _make_campus(tmp_path)
    with pytest.raises(DatasetError, match=match):
        create_dataset("cuhk01", root=tmp_path, **options)


def test_cuhk01_bad_file_name(tmp_path):
    _make_campus(tmp_path, num_ids=3)
    _write_image(tmp_path / "0001005.png")
    with pytest.raises(DatasetError, match="0001005.png"):
        create_dataset("cuhk01", root=tmp_path, num_test_ids=2)


# ---------------------------------------------------------------------------- folder
def _make_splits(root: Path) -> None:
    for rel in ["train/a/0001_c1_x.jpg", "train/a/0001_c2_y.JPG", "train/b/deep/0003_c1_z.png",
                "train/-1_c1_junk.jpg", "query/0005_c1_q.jpeg", "query/0006_c2_q.bmp",
                "gallery/0005_c2_g.webp", "gallery/0006_c1_g.png", "gallery/0000_c3_d.jpg"]:
        _write_image(root / rel)
    (root / "gallery" / "notes.txt").write_text("ignored")


def test_folder_splits(tmp_path):
    _make_splits(tmp_path)
    ds = create_dataset("folder", root=tmp_path)  # auto -> splits
    assert _triples(ds.train) == sorted([("0001_c1_x.jpg", 0, 0), ("0001_c2_y.JPG", 0, 1),
                                         ("0003_c1_z.png", 1, 0)])
    assert _triples(ds.query) == [("0005_c1_q.jpeg", 5, 0), ("0006_c2_q.bmp", 6, 1)]
    assert _triples(ds.gallery) == [("0000_c3_d.jpg", 0, 2), ("0005_c2_g.webp", 5, 1),
                                    ("0006_c1_g.png", 6, 0)]


@pytest.mark.parametrize("empty_train", [False, True])
def test_folder_eval_only(tmp_path, empty_train):
    _make_splits(tmp_path)
    for f in sorted((tmp_path / "train").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    if not empty_train:
        (tmp_path / "train").rmdir()
    ds = create_dataset("folder", root=tmp_path, mode="splits")
    assert ds.train == [] and len(ds.query) == 2 and len(ds.gallery) == 3


def test_folder_custom_pattern(tmp_path):
    for rel in ["query/id7-cam0.png", "gallery/id7-cam1.png", "gallery/id8-cam1.png"]:
        _write_image(tmp_path / rel)
    pattern = r"id(?P<pid>\d+)-cam(?P<camid>\d+)"
    ds = create_dataset("folder", root=tmp_path, pattern=pattern, camid_base=0)
    assert _triples(ds.gallery) == [("id7-cam1.png", 7, 1), ("id8-cam1.png", 8, 1)]


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        create_dataset("folder", root=tmp_path / "missing")
    _make_splits(tmp_path)
    _write_image(tmp_path / "query" / "holiday.jpg")
    with pytest.raises(DatasetError, match=r"holiday\.jpg.*pattern"):
        create_dataset("folder", root=tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 file"):
        ds = create_dataset("folder", root=tmp_path, ignore_unmatched=True)
    assert len(ds.query) == 2
    with pytest.raises(DatasetError, match="named group"):
        create_dataset("folder", root=tmp_path, pattern=r"(?P<pid>\d+)")
    os.remove(tmp_path / "query" / "holiday.jpg")
    with pytest.raises(DatasetError, match="camid_base"):
        create_dataset("folder", root=tmp_path, camid_base=2)
    for f in (tmp_path / "query").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="query.*holds no image"):
        create_dataset("folder", root=tmp_path)
    (tmp_path / "query").rmdir()
    with pytest.raises(DatasetError, match="query"):
        create_dataset("folder", root=tmp_path, mode="splits")
    with pytest.raises(DatasetError, match="mode"):
        create_dataset("folder", root=tmp_path, mode="eval")


def _make_pool(folder: Path, num_ids: int = 10) -> list[tuple[str, int, int]]:
    made = []
    for pid in range(num_ids):
        for cam in (1, 2):
            for k in range(1 + (pid + cam) % 3):
                name = f"{pid:04d}_c{cam}_{k:02d}.jpg"
                _write_image(folder / name, size=(2, 2))
                made.append((name, pid, cam - 1))
    _write_image(folder / "-1_c1_00.jpg", size=(2, 2))
    return made


def test_folder_single_split(tmp_path):
    made = _make_pool(tmp_path)
    ds = create_dataset("folder", root=tmp_path, test_ratio=0.3, seed=5)  # auto -> single
    test_ids = {s.pid for s in ds.query}
    train_ids = set(ds.train_pid_map)
    assert len(test_ids) == 3 and not test_ids & train_ids
    assert test_ids | train_ids == set(range(10))
    # one query per (test identity, camera); query + gallery = all images of the test identities
    assert sorted(Counter((s.pid, s.camid) for s in ds.query).values()) == [1] * 6
    assert sorted(_triples(ds.query) + [t for t in _triples(ds.gallery) if t[1] != -1]) == sorted(
        t for t in made if t[1] in test_ids)
    assert [t for t in _triples(ds.gallery) if t[1] == -1] == [("-1_c1_00.jpg", -1, 0)]
    assert len(ds.train) == sum(1 for t in made if t[1] in train_ids)
    again = create_dataset("folder", root=tmp_path, mode="single", test_ratio=0.3, seed=5)
    assert _triples(again.query) == _triples(ds.query)
    assert _triples(again.train) == _triples(ds.train)
    picks = {tuple(_triples(create_dataset("folder", root=tmp_path, mode="single", seed=s).query))
             for s in range(4)}
    assert len(picks) > 1
    with pytest.raises(DatasetError, match="test_ratio"):
        create_dataset("folder", root=tmp_path, test_ratio=0)


def test_folder_train_mode(tmp_path):
    made = _make_pool(tmp_path / "imgs", num_ids=4)
    ds = create_dataset("folder", root=tmp_path / "imgs", mode="train")
    assert ds.query == [] and ds.gallery == []
    assert _triples(ds.train) == sorted(made)  # pids 0-3 relabel to themselves; junk dropped


# ---------------------------------------------------------------------------- csv
def test_csv_manifest(tmp_path):
    (tmp_path / "m").mkdir()
    absolute = tmp_path / "elsewhere" / "x.png"
    (tmp_path / "m" / "list.csv").write_text(
        "path,pid,camid,split\n"
        "imgs/a.jpg,10,0,train\nimgs/b.jpg,10,1,train\nimgs/c.jpg,12,0,TRAIN\n"
        f"q/d.jpg,20,0,query\n{absolute},20,1,gallery\ng/f.jpg,-1,1,gallery\n"
    )
    ds = create_dataset("csv", path=tmp_path / "m" / "list.csv")
    imgs = tmp_path / "m" / "imgs"
    assert [(s.img_path, s.pid, s.camid) for s in ds.train] == [
        (str(imgs / "a.jpg"), 0, 0), (str(imgs / "b.jpg"), 0, 1), (str(imgs / "c.jpg"), 1, 0)]
    assert ds.query == [(str(tmp_path / "m" / "q" / "d.jpg"), 20, 0)]
    assert ds.gallery == [(str(absolute), 20, 1), (str(tmp_path / "m" / "g" / "f.jpg"), -1, 1)]
    (tmp_path / "train.csv").write_text("path,pid,camid\na.jpg,3,1\nb.jpg,4,0\n")
    train_only = create_dataset("csv", root=tmp_path / "train.csv")
    assert len(train_only.train) == 2 and train_only.query == [] and train_only.gallery == []


@pytest.mark.parametrize("text,match", [
    ("path,pid\na.jpg,1\n", r"list\.csv:1: header"),
    ("path,pid,camid,spilt\na.jpg,1,0,query\n", r"list\.csv:1: header"),
    ("path,pid,camid\na.jpg,1,0\nb.jpg,x,0\n", r"list\.csv:3: pid 'x'"),
    ("path,pid,camid,split\na.jpg,1,0,test\n", r"list\.csv:2: split 'test'"),
    ("path,pid,camid\na.jpg,1\n", r"list\.csv:2: expected 3 fields"),
    ("path,pid,camid,split\na.jpg,1,0,query\n", "no gallery row"),
])
def test_csv_errors(tmp_path, text, match):
    (tmp_path / "list.csv").write_text(text)
    with pytest.raises(DatasetError, match=match):
        create_dataset("csv", path=tmp_path / "list.csv")


def test_csv_missing_manifest(tmp_path):
    with pytest.raises(DatasetError, match="not a file"):
        create_dataset("csv", root=tmp_path / "none.csv")


# ---------------------------------------------------------------------------- real data
@pytest.mark.real_data
@pytest.mark.skipif(not (DATA / "CUHK01" / "campus").is_dir(),
                    reason="../shared/data/CUHK01 absent")
def test_real_cuhk01_protocols():
    ds = create_dataset("cuhk01", root=DATA / "CUHK01")
    assert (ds.num_train_pids, len(ds.train)) == (485, 1940)
    assert len({s.pid for s in ds.query}) == 486 and len(ds.query) == len(ds.gallery) == 972
    assert sorted({s.pid for s in ds.query})[:8] == [3, 6, 9, 13, 14, 16, 19, 20]  # golden split 0
    small = create_dataset("cuhk01", root=DATA / "CUHK01" / "campus", num_test_ids=100, split_id=3)
    assert (small.num_train_pids, len(small.query), len(small.gallery)) == (871, 200, 200)
    everything = create_dataset("cuhk01", root=DATA / "CUHK01", num_test_ids=971)
    assert everything.train == [] and len(everything.query) + len(everything.gallery) == 3884


@pytest.mark.real_data
@pytest.mark.skipif(not (DATA / "CUHK03-pair1-detected" / "train").is_dir(),
                    reason="../shared/data/CUHK03-pair1-detected absent")
def test_real_cuhk03_pair1_folder():
    root = DATA / "CUHK03-pair1-detected" / "train"
    ds = create_dataset("folder", root=root, mode="train")
    assert (ds.num_train_pids, len(ds.train), ds.num_train_cams) == (743, 7239, 2)
    split = create_dataset("folder", root=root, mode="single")
    test_ids = {s.pid for s in split.query}
    assert split.num_train_pids + len(test_ids) == 743 and len(test_ids) == 372
    assert len(split.train) + len(split.query) + len(split.gallery) == 7239
