"""Data-parallel training and extraction with 2 gloo processes through torchrun (``--nproc``).

One step with 2 processes x batch B (synchronised batch norm) equals one single-process step
with batch 2B on the same samples; distributed extraction writes the single process's features;
a distributed run resumes.
"""

import copy

import numpy as np
import pytest
import torch
import yaml

from reidkit.cli import main
from reidkit.engine.distributed import CPUSyncBatchNorm, RankSlice
from reidkit.data.samplers import PKSampler

from reidkit_testing import TINY_RUN


def _config(tmp_path):
    cfg = copy.deepcopy(TINY_RUN)
    cfg["data"].update(pad=0, flip_p=0.0, random_erasing_p=0.0, num_pids_per_batch=2, height=64, width=32)
    cfg["data"]["options"]["image_size"] = [64, 32]
    cfg["loss"] = {"ce": {"label_smoothing": 0.1}}  # a per-sample mean: 2 x B averages to 2B
    cfg["optim"] = {"name": "sgd", "lr": 0.01}
    cfg["train"].update(iters_per_epoch=1, sync_bn=True)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_two_processes_equal_one_with_the_double_batch(tmp_path):
    cfg = _config(tmp_path)
    assert main(["train", str(cfg), "--output", str(tmp_path / "two"), "--nproc", "2"]) == 0
    assert main(["train", str(cfg), "--output", str(tmp_path / "one"), "--set", "data.num_pids_per_batch=4"]) == 0
    two, one = _weights(tmp_path / "two" / "last.pt"), _weights(tmp_path / "one" / "last.pt")
    for key in one:
        torch.testing.assert_close(two[key].float(), one[key].float(), rtol=1e-4, atol=1e-5, msg=key)
    assert main(["train", str(cfg), "--output", str(tmp_path / "two"), "--nproc", "2", "--resume",
                 "--set", "train.max_epochs=2"]) == 0
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=True)["epoch"] == 2


def test_distributed_extract_equals_single_process(tmp_path, tiny_run):
    ck = str(tiny_run / "last.pt")
    assert main(["extract", "--checkpoint", ck, "--output", str(tmp_path / "one.npz"), "--backend", "torch"]) == 0
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "reidkit",
           "extract", "--checkpoint", ck, "--output", str(tmp_path / "two.npz"), "--backend", "torch"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert list(one["paths"]) == list(two["paths"]) and (one["pids"] == two["pids"]).all()
    np.testing.assert_allclose(one["features"], two["features"], rtol=1e-5, atol=1e-6)


def test_rank_slices_give_whole_identities():
    pids = np.repeat(np.arange(12), 3)
    glob = PKSampler(pids, 4, 2, seed=3)
    slices = [list(RankSlice(PKSampler(pids, 4, 2, seed=3), 2, r)) for r in range(2)]
    flat = list(glob)
    for b in range(len(flat) // 8):
        assert flat[b * 8:b * 8 + 4] == slices[0][b * 4:b * 4 + 4]
        assert flat[b * 8 + 4:b * 8 + 8] == slices[1][b * 4:b * 4 + 4]
    for s in slices:  # each slice holds 2 whole identities x 2 images
        for b in range(len(s) // 4):
            assert len({int(pids[i]) for i in s[b * 4:b * 4 + 4]}) == 2
    with pytest.raises(ValueError, match="equal slices"):
        RankSlice(PKSampler(pids, 3, 1), 2, 0)


def test_cpu_sync_batchnorm_is_plain_batchnorm_in_one_process():
    bn = torch.nn.BatchNorm2d(4)
    sync = CPUSyncBatchNorm(copy.deepcopy(bn))
    x = torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(sync(x), bn(x))
    assert set(sync.state_dict()) == set(bn.state_dict())
