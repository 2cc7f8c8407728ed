"""PairSampler: Siamese pair layout, negative : positive ratio, no self-pairs, determinism."""

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from reidkit.data.pair_sampler import PairSampler

# 7 identities of sizes 3, 1, 4, 2, 1, 5, 2: identities 1 and 4 have a single image
PIDS = [0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 5, 5, 5, 5, 5, 6, 6]


def _batches(sampler):
    idx = list(sampler)
    size = sampler.batch_size
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def _pairs(batch):
    return list(zip(batch[0::2], batch[1::2]))


@pytest.mark.parametrize("batch_size,ratio,n_pos", [(12, 2.0, 2), (6, 2.0, 1), (64, 2.0, 11),
                                                    (8, 1.0, 2), (8, 0.0, 4)])
def test_every_batch_has_the_exact_pair_split(batch_size, ratio, n_pos):
    pids = PIDS * 4
    sampler = PairSampler(pids, batch_size, neg_pos_ratio=ratio, seed=3)
    for batch in _batches(sampler):
        same = [pids[i] == pids[j] for i, j in _pairs(batch)]
        assert len(batch) == batch_size
        assert sum(same) == n_pos  # round((batch_size / 2) / (1 + ratio)) counted by hand
        assert len(same) - sum(same) == batch_size // 2 - n_pos


def test_no_self_pairs_and_singletons_never_in_positive_pairs():
    pids = PIDS
    sampler = PairSampler(pids, 6, seed=0)
    counts = Counter(pids)
    for epoch in range(20):
        sampler.set_epoch(epoch)
        for batch in _batches(sampler):
            for i, j in _pairs(batch):
                assert i != j
                if pids[i] == pids[j]:
                    assert counts[pids[i]] >= 2


def test_positive_anchors_cover_every_eligible_image():
    pids = PIDS * 2  # 36 images, every identity has >= 2 images
    sampler = PairSampler(pids, 72, neg_pos_ratio=0.0, seed=5)  # one batch of 36 positive pairs
    pairs = _pairs(list(sampler))
    assert sorted(i for i, _ in pairs) == list(range(36))  # each image is an anchor once
    assert all(pids[i] == pids[j] for i, j in pairs)


def test_partners_are_uniform_over_the_allowed_images():
    pids = [0, 0, 0, 1, 1]  # positive partner of image 0: image 1 or 2; negative: image 3 or 4
    pos_partners, neg_partners = Counter(), Counter()
    sampler = PairSampler(pids, 6, neg_pos_ratio=2.0, seed=0)
    for epoch in range(2000):
        sampler.set_epoch(epoch)
        for i, j in _pairs(list(sampler)):
            if i == 0:
                (pos_partners if pids[j] == 0 else neg_partners)[j] += 1
    assert set(pos_partners) == {1, 2} and set(neg_partners) == {3, 4}
    for counter in (pos_partners, neg_partners):
        a, b = counter.values()
        assert abs(a - b) < 0.25 * (a + b)  # about 400 and 800 draws: 5 and 4 sigma


def test_deterministic_per_seed_and_epoch():
    a, b = PairSampler(PIDS, 12, seed=7), PairSampler(PIDS, 12, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PairSampler(PIDS, 12, seed=8)) != first


def test_epoch_length_is_about_one_pass():
    sampler = PairSampler(PIDS * 3, 12)  # 54 images: 4 batches
    assert sampler.batch_size == 12
    assert len(sampler) == 48 == len(list(sampler))
    assert len(PairSampler(PIDS[:6], 12)) == 12  # at least one batch


def test_dataloader_keeps_the_pair_layout():
    class _Pids(Dataset):
        def __len__(self):
            return len(PIDS)

        def __getitem__(self, i):
            return torch.tensor(PIDS[i]), i

    sampler = PairSampler(PIDS, 6, seed=1)
    loader = DataLoader(_Pids(), batch_size=sampler.batch_size, sampler=sampler, drop_last=True)
    for (labels, idx), batch in zip(loader, _batches(sampler)):
        assert idx.tolist() == batch
        assert (labels[0::2] == labels[1::2]).sum().item() == 1


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        PairSampler(PIDS, 7)
    with pytest.raises(ValueError, match="neg_pos_ratio"):
        PairSampler(PIDS, 8, neg_pos_ratio=-1.0)
    with pytest.raises(ValueError, match="two images"):
        PairSampler([0, 1, 2, 3], 6)
    with pytest.raises(ValueError, match="two identities"):
        PairSampler([0, 0, 0], 6)
