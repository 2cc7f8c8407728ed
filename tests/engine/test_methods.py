"""Training methods: the seam's contract, batch-layout checks, method state in checkpoints
(exact resume with a memory bank) and PAUL's target stage never seeing labels."""

import copy

import pytest
import torch
import yaml

from reidkit.engine.config import ConfigError, config_from_dict
from reidkit.engine.methods import list_methods
from reidkit.engine.trainer import Trainer

from reidkit_testing import TINY_RUN


def quiet(*_):
    pass


def config(**patch):
    data = copy.deepcopy(TINY_RUN)
    for key, value in patch.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config_from_dict(yaml.safe_load(yaml.safe_dump(data)))


PAUL = {
    "model.name": "paul_mobilenet_v2", "model.kwargs": {"num_patches": 3, "patch_dim": 16, "loc_channels": 8, "loc_hidden": 8},
    "method.name": "paul", "method.options": {"k": 3, "scale": 10.0},
    "data.sampler": "random", "data.batch_size": 4, "data.height": 64, "data.width": 32,
    "data.options.image_size": [64, 32], "train.max_epochs": 3, "train.iters_per_epoch": 2,
}


def test_registered_methods():
    assert {"supervised", "mutual", "paul", "paul_source"} <= set(list_methods())


def test_a_loss_needing_pairs_refuses_pk_batches(tmp_path):
    cfg = config(loss={"ce": {}, "contrastive": {"pairs": "adjacent", "start_epoch": 3}})
    with pytest.raises(ConfigError, match="loss.contrastive needs batches laid out as 'pairs'.*'pk'"):
        Trainer(cfg, tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


def test_late_loss_typo_fails_at_start(tmp_path):
    cfg = config(loss={"ce": {}, "triplet": {"margn": 0.3, "start_epoch": 5}})
    with pytest.raises(ConfigError, match="margn"):
        Trainer(cfg, tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


def test_paul_needs_the_label_free_sampler(tmp_path):
    with pytest.raises(ConfigError, match="data.sampler"):
        Trainer(config(**{**PAUL, "data.sampler": "pk"}), tmp_path / "run", log=quiet)


def _bank_and_weights(trainer):
    return trainer.method.bank.memory.clone(), {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_paul_resume_with_memory_bank_is_exact(tmp_path):
    full = Trainer(config(**PAUL), tmp_path / "full", log=quiet)
    full.fit()
    half = Trainer(config(**{**PAUL, "train.max_epochs": 1}), tmp_path / "half", log=quiet)
    half.fit()
    with pytest.warns(UserWarning, match="differs"):
        resumed = Trainer(config(**PAUL), tmp_path / "half", resume=True, log=quiet)
    assert torch.equal(resumed.method.bank.memory, half.method.bank.memory)  # the bank came back
    resumed.fit()
    (bank_a, w_a), (bank_b, w_b) = _bank_and_weights(full), _bank_and_weights(resumed)
    assert torch.equal(bank_a, bank_b)
    assert all(torch.equal(w_a[k], w_b[k]) for k in w_a)
    assert all(not p.requires_grad for p in resumed.model.patch_generator.parameters())  # frozen again


def _train_with_labels(tmp_path, name, relabel):
    trainer = Trainer(config(**{**PAUL, "train.max_epochs": 2}), tmp_path / name, log=quiet)
    samples = trainer.loader.dataset.samples
    trainer.loader.dataset.samples = [s._replace(pid=relabel(i, s.pid)) for i, s in enumerate(samples)]
    trainer.fit()
    return _bank_and_weights(trainer)


def test_paul_target_labels_never_reach_a_loss(tmp_path):
    """Shuffled or removed target labels give bit-identical training."""
    generator = torch.Generator().manual_seed(0)
    shuffled = torch.randperm(1000, generator=generator).tolist()
    runs = [
        _train_with_labels(tmp_path, "true", lambda i, pid: pid),
        _train_with_labels(tmp_path, "shuffled", lambda i, pid: shuffled[i % 1000] % 7),
        _train_with_labels(tmp_path, "removed", lambda i, pid: 0),
    ]
    (bank0, w0) = runs[0]
    for bank, weights in runs[1:]:
        assert torch.equal(bank0, bank)
        assert all(torch.equal(w0[k], weights[k]) for k in w0)


def test_paul_source_then_target(tmp_path):
    source = config(**{
        "model.name": "paul_mobilenet_v2", "model.kwargs": PAUL["model.kwargs"], "method.name": "paul_source",
        "data.height": 64, "data.width": 32, "data.options.image_size": [64, 32], "train.max_epochs": 1,
    })
    trainer = Trainer(source, tmp_path / "source", log=quiet)
    record = trainer.fit()
    assert "mAP" in record
    gen = {k: v.clone() for k, v in trainer.model.patch_generator.state_dict().items()}
    target = config(**{**PAUL, "train.max_epochs": 1,
                       "method.options": {"k": 3, "source_checkpoint": str(tmp_path / "source" / "last.pt")}})
    tgt = Trainer(target, tmp_path / "target", log=quiet)
    assert all(torch.equal(gen[k], v) for k, v in tgt.model.patch_generator.state_dict().items())
    tgt.fit()
    assert all(torch.equal(gen[k], v) for k, v in tgt.model.patch_generator.state_dict().items())  # frozen
