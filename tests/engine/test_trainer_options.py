"""Trainer options of the seed methods: mutual learning, two-stage losses, resize+crop."""

import json

import torch
from PIL import Image

from reidkit.data.transforms import TransformConfig, build_transforms
from reidkit.engine.config import config_from_dict
from reidkit.engine.trainer import Trainer, active_loss_spec

DATA = {
    "name": "synthetic",
    "options": {"num_train_ids": 8, "num_test_ids": 4, "num_cameras": 2, "image_size": [32, 16], "num_distractors": 2},
    "height": 32, "width": 16, "pad": 2, "num_pids_per_batch": 4, "num_instances": 2, "num_workers": 0,
}
TRAIN = {"max_epochs": 2, "eval_every": 0, "amp": False, "iters_per_epoch": 2}


def quiet(*_):
    pass


def cfg(**sections):
    base = {"data": DATA, "train": TRAIN, "model": {"name": "osnet_x0_25", "kwargs": {"head": "bnneck"}},
            "optim": {"lr": 1e-3}, "eval": {"max_rank": 5}}
    return config_from_dict({**base, **sections})


def test_mutual_with_zero_weights_equals_training_alone(tmp_path):
    peers = [{"name": "osnet_x0_25", "kwargs": {"head": "bnneck"}}, {"name": "mobilenet_v2"}]
    group = Trainer(cfg(mutual={"peers": peers, "dml_weight": 0.0, "metric_weight": 0.0}), tmp_path / "g", log=quiet)
    results = group.fit()
    assert {"peer0.rank1", "peer1.mAP"} <= set(results)
    for i, peer in enumerate(peers):
        alone = Trainer(cfg(model={**peer, "init_seed": i}), tmp_path / f"alone{i}", log=quiet)
        alone.fit()
        for (k, a), b in zip(alone.model.state_dict().items(), group.models[i].state_dict().values()):
            torch.testing.assert_close(a, b, msg=f"peer {i}: {k}")
    assert (tmp_path / "g" / "peer1.pt").exists()


def test_mutual_terms_are_logged_and_change_training(tmp_path):
    peers = [{"name": "osnet_x0_25", "kwargs": {"head": "bnneck"}}, {"name": "osnet_x0_25", "kwargs": {"head": "bnneck"}}]
    on = Trainer(cfg(mutual={"peers": peers, "dml_weight": 1.0, "metric_weight": 1.0}), tmp_path / "on", log=quiet)
    on.fit()
    record = json.loads((tmp_path / "on" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"dml", "metric_mutual", "peer0.ce", "peer1.triplet"} <= set(record)
    off = Trainer(cfg(mutual={"peers": peers, "dml_weight": 0.0, "metric_weight": 0.0}), tmp_path / "off", log=quiet)
    off.fit()
    w_on, w_off = on.models[0].head.bn.weight, off.models[0].head.bn.weight
    assert not torch.allclose(w_on, w_off)


def test_loss_start_epoch(tmp_path):
    spec = {"ce": {"weight": 1.0}, "triplet": {"margin": 0.3, "start_epoch": 1}}
    assert active_loss_spec(spec, 0) == {"ce": {"weight": 1.0}}
    assert active_loss_spec(spec, 1) == {"ce": {"weight": 1.0}, "triplet": {"margin": 0.3}}
    Trainer(cfg(loss=spec), tmp_path, log=quiet).fit()
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "triplet" not in lines[0] and "triplet" in lines[1]


def test_resize_then_crop():
    img = Image.new("RGB", (64, 160))
    img.paste((255, 0, 0), (0, 0, 64, 8))  # a red band on top, cut off by the centre crop
    t = build_transforms(TransformConfig(height=144, width=56, resize=(160, 64), flip_p=0, pad=0,
                                         random_erasing_p=0), train=False)
    x = t(img)
    assert x.shape == (3, 144, 56)
    assert x[0, 0].max() < 0  # the red band (rows 0-7) is gone: row 0 is black after normalisation
    xt = build_transforms(TransformConfig(height=144, width=56, resize=(160, 64)), train=True)(img)
    assert xt.shape == (3, 144, 56)
