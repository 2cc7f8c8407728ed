from collections import Counter

import pytest
import torch
from PIL import Image

from reidkit.data.samplers import PKSampler
from reidkit.data.transforms import TransformConfig, build_transforms


def test_pk_batches_hold_p_identities_k_each():
    pids = [0] * 10 + [1] * 2 + [2] * 5 + [3] * 7 + [4] * 1 + [5] * 4
    sampler = PKSampler(pids, num_pids_per_batch=3, num_instances=4, seed=1)
    order = list(sampler)
    assert len(order) == len(sampler) == 2 * 12  # 6 ids // P=3 -> 2 batches
    for b in range(2):
        batch = order[b * 12 : (b + 1) * 12]
        counts = Counter(pids[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {4}
    # every identity used exactly once per epoch
    assert sorted(Counter(pids[i] for i in order)) == [0, 1, 2, 3, 4, 5]


def test_pk_without_replacement_when_enough_images():
    pids = [0] * 8 + [1] * 8
    order = list(PKSampler(pids, 2, 4, seed=0))
    assert len(set(order)) == len(order)


def test_pk_seeded_and_epoch_dependent():
    pids = [i // 4 for i in range(40)]
    a, b = PKSampler(pids, 2, 4, seed=5), PKSampler(pids, 2, 4, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)


def test_pk_errors():
    with pytest.raises(ValueError, match="at least P=4"):
        PKSampler([0, 1, 2], 4, 2)
    with pytest.raises(ValueError, match="num_instances=0"):
        PKSampler([0, 1], 1, 0)


def test_transforms_shapes_and_normalisation():
    img = Image.new("RGB", (60, 160), (124, 116, 104))  # ~ImageNet mean colour
    cfg = TransformConfig(height=64, width=32)
    test_t = build_transforms(cfg, train=False)
    x = test_t(img)
    assert x.shape == (3, 64, 32) and x.dtype == torch.float32
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    torch.testing.assert_close(x[:, 10, 10], expected.float(), atol=1e-3, rtol=0)
    torch.manual_seed(0)
    assert build_transforms(cfg, train=True)(img).shape == (3, 64, 32)


def test_check_images_reports_and_skips_truncated_file(tmp_path):
    import warnings

    from reidkit.data import ImageReadError, ReIDDataset

    good, bad = tmp_path / "0001_c1_0.jpg", tmp_path / "0002_c2_0.jpg"
    Image.new("RGB", (20, 40), (10, 20, 30)).save(good)
    Image.new("RGB", (20, 40), (10, 20, 30)).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])  # truncated JPEG
    items = [(str(good), 1, 0), (str(bad), 2, 1)]
    ds = ReIDDataset(items, items, items)
    with pytest.raises(ImageReadError, match="0002_c2_0.jpg"):
        ds.check_images()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ds.check_images(skip_unreadable=True) == [str(bad)]
    assert "0002_c2_0.jpg" in str(caught[0].message)
    assert [s.img_path for s in ds.query] == [str(good)]


@pytest.mark.parametrize(
    "cpus, eval_workers, data_workers, expected",
    [
        (2, None, None, 0),  # 2 CPUs: decode between batches, every core to the model
        (1, None, 3, 0),
        (2, 1, None, 1),  # eval.num_workers always wins
        (8, None, None, 4),  # more CPUs: data.num_workers, automatic = min(4, cpus - 1)
        (8, None, 2, 2),
        (8, 0, 2, 0),
    ],
)
def test_extraction_workers(monkeypatch, cpus, eval_workers, data_workers, expected):
    from reidkit.data import loader

    monkeypatch.setattr(loader.os, "cpu_count", lambda: cpus)
    assert loader.extraction_workers(eval_workers, data_workers) == expected
    samples = [("x.jpg", 0, 0)] * 3
    assert loader.eval_loader(samples, lambda p: None, lambda x: x, num_workers=eval_workers).num_workers == (
        eval_workers if eval_workers is not None else (0 if cpus <= 2 else 4)
    )
