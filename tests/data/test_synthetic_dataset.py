"""Tests of the ``synthetic`` dataset: determinism, split statistics, and that it is a real task."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image

from reidkit.data import DatasetError, ImageReadError, create_dataset, list_datasets
from reidkit.data.datasets.synthetic import SyntheticReID, identity, parse_key, render_image

SMALL = dict(num_train_ids=6, num_test_ids=5, num_cameras=3, images_per_id_per_camera=2,
             num_distractors=4)


def pixels(dataset, key: str) -> np.ndarray:
    return np.asarray(dataset.load_image(key))


# ------------------------------------------------------------------------------ determinism
def test_same_key_gives_identical_pixels_across_instances():
    a, b = SyntheticReID(seed=3, **SMALL), SyntheticReID(seed=3, **SMALL)
    assert a.query == b.query and a.gallery == b.gallery and a.train == b.train
    for sample in a.query[:3] + a.gallery[-3:]:  # includes distractors
        np.testing.assert_array_equal(pixels(a, sample.img_path), pixels(b, sample.img_path))
        np.testing.assert_array_equal(pixels(a, sample.img_path), pixels(a, sample.img_path))


def test_different_seed_index_or_camera_gives_different_images():
    base = np.asarray(render_image(0, 7, 1, 0), dtype=np.int16)
    for args in [(1, 7, 1, 0), (0, 7, 1, 1), (0, 7, 2, 0), (0, 8, 1, 0)]:
        other = np.asarray(render_image(*args), dtype=np.int16)
        assert np.abs(base - other).mean() > 5, args
    assert identity(0, 7) != identity(1, 7)


def test_images_are_rgb_of_the_requested_size():
    ds = SyntheticReID(image_size=(96, 40), **SMALL)
    img = ds.load_image(ds.query[0].img_path)
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (40, 96)
    assert np.asarray(img).std() > 10  # not a blank canvas


def test_keys_name_seed_pid_camera_and_index():
    ds = SyntheticReID(seed=11, **SMALL)
    for sample in ds.query + ds.gallery:
        seed, pid, camid, _ = parse_key(sample.img_path)
        assert (seed, pid, camid) == (11, sample.pid, sample.camid)


# ------------------------------------------------------------------------------ statistics
def test_split_statistics_follow_the_market_like_scheme():
    ds = SyntheticReID(**SMALL)
    n_train, n_test, cams, k = 6, 5, 3, 2
    assert len(ds.train) == n_train * cams * k and ds.num_train_pids == n_train
    assert sorted({s.pid for s in ds.train}) == list(range(n_train))  # relabelled
    assert sorted(ds.train_pid_map) == list(range(1, n_train + 1))
    assert all({s.camid for s in ds.train if s.pid == p} == set(range(cams)) for p in range(6))
    test_pids = set(range(n_train + 1, n_train + n_test + 1))
    assert {s.pid for s in ds.query} == test_pids
    assert {s.pid for s in ds.gallery} == test_pids | {0}
    assert len(ds.query) == n_test * math.ceil(cams / 2)
    assert len(ds.gallery) == n_test * cams * k - len(ds.query) + 4
    assert sum(s.pid == 0 for s in ds.gallery) == 4
    assert not {s.img_path for s in ds.query} & {s.img_path for s in ds.gallery}


def test_every_query_has_a_cross_camera_match_and_a_same_camera_junk_item():
    ds = SyntheticReID(**SMALL)
    for q in ds.query:
        same_pid = [g for g in ds.gallery if g.pid == q.pid]
        assert any(g.camid != q.camid for g in same_pid)
        assert any(g.camid == q.camid for g in same_pid)  # excluded by the protocol


def test_registry_builds_it_and_ignores_root():
    assert "synthetic" in list_datasets()
    ds = create_dataset("synthetic", root="/does/not/exist", seed=2, **SMALL)
    assert isinstance(ds, SyntheticReID) and ds.seed == 2


def test_near_duplicates_differ_in_exactly_one_visible_attribute():
    def changed(a, b):
        return [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]

    hard = [len(changed(identity(0, p - 1, 1.0), identity(0, p, 1.0))) for p in range(2, 80)]
    assert hard.count(1) >= 20  # about half are near-duplicates at difficulty 1
    assert all(n == 1 or n > 3 for n in hard)  # the others are independent people
    easy = [len(changed(identity(0, p - 1, 0.0), identity(0, p, 0.0))) for p in range(2, 80)]
    assert min(easy) > 3
    for p in range(2, 80):  # independent identities do not depend on difficulty
        assert identity(0, p, 1.0) == identity(0, p, 0.0) or hard[p - 2] == 1


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("option, value", [
    ("num_cameras", 1), ("num_test_ids", 0), ("seed", -1), ("difficulty", 1.5),
    ("image_size", (10, 10)), ("images_per_id_per_camera", 0), ("num_distractors", 2.5),
])
def test_bad_options_name_the_option(option, value):
    options = {**SMALL, option: value}
    with pytest.raises(DatasetError, match=option):
        SyntheticReID(**options)


@pytest.mark.parametrize("key", ["synthetic://0/1/2", "/tmp/x.jpg", "synthetic://0/1/9/0"])
def test_bad_keys_raise_image_read_error(key):
    with pytest.raises(ImageReadError, match="synthetic"):
        SyntheticReID(**SMALL).load_image(key)


# ------------------------------------------------------------------------------ a real task
def raw_pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.resize((8, 16), Image.BOX), np.float32).ravel()  # (384,)


def grey_world_colours(img: Image.Image) -> np.ndarray:
    """Colours of the figure's central columns, per-image white-balanced, sorted per body band."""
    a = np.asarray(img.resize((8, 16), Image.BOX), np.float32)[:, 2:6]  # (16, 4, 3)
    a = a / a.reshape(-1, 3).mean(0)
    bands = [np.sort(a[r:r + 4].reshape(-1, 3), axis=0).ravel() for r in (0, 4, 8, 12)]
    return np.concatenate(bands)  # (48,)


def rank1(q_feats, g_feats, query, gallery) -> float:
    """Market-protocol rank-1 by a plain loop: skip same pid + same camera gallery items."""
    hits = 0
    for qf, q in zip(q_feats, query):
        dists = [float(((qf - gf) ** 2).sum()) for gf in g_feats]
        for j in sorted(range(len(gallery)), key=dists.__getitem__):
            if gallery[j].pid == q.pid and gallery[j].camid == q.camid:
                continue
            hits += gallery[j].pid == q.pid
            break
    return hits / len(query)


def evaluate(ds, feature) -> float:
    q_imgs = [ds.load_image(s.img_path) for s in ds.query]
    g_imgs = [ds.load_image(s.img_path) for s in ds.gallery]
    return rank1([feature(i) for i in q_imgs], [feature(i) for i in g_imgs], ds.query, ds.gallery)


@pytest.fixture(scope="module")
def default_images():
    ds = SyntheticReID()  # the defaults: 100 train / 50 test ids, 4 cameras, difficulty 0.5
    return ds, [ds.load_image(s.img_path) for s in ds.query], [
        ds.load_image(s.img_path) for s in ds.gallery]


def test_raw_pixels_have_signal_but_do_not_solve_it(default_images):
    ds, q_imgs, g_imgs = default_images
    chance = 1 / len({s.pid for s in ds.query})
    score = rank1([raw_pixels(i) for i in q_imgs], [raw_pixels(i) for i in g_imgs], ds.query,
                  ds.gallery)
    assert 3 * chance < score < 0.6, score


def test_clothing_colours_carry_the_identity(default_images):
    ds, q_imgs, g_imgs = default_images
    feats = [grey_world_colours(i) for i in q_imgs], [grey_world_colours(i) for i in g_imgs]
    raw = [raw_pixels(i) for i in q_imgs], [raw_pixels(i) for i in g_imgs]
    colour_score = rank1(*feats, ds.query, ds.gallery)
    assert colour_score > rank1(*raw, ds.query, ds.gallery) + 0.2, colour_score


def test_difficulty_controls_how_hard_it_is():
    opts = dict(num_train_ids=0, num_test_ids=15, num_distractors=10)
    easy = evaluate(SyntheticReID(difficulty=0.0, **opts), raw_pixels)
    hard = evaluate(SyntheticReID(difficulty=1.0, **opts), raw_pixels)
    assert easy > hard + 0.3, (easy, hard)
