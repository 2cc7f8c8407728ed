"""Training loop: resume equals an uninterrupted run, NaN stops cleanly, budgets, schedules."""

import math
import os

import pytest
import torch

from reidkit.engine.checkpoint import atomic_save, load_checkpoint
from reidkit.engine.config import SchedConfig, config_from_dict
from reidkit.engine.trainer import Trainer, TrainingDiverged, lr_factor


def tiny_config(**train):
    return config_from_dict({
        "data": {
            "name": "synthetic",
            "options": {"num_train_ids": 8, "num_test_ids": 4, "num_cameras": 2, "image_size": [32, 16],
                        "num_distractors": 2},
            "height": 32, "width": 16, "pad": 2, "num_pids_per_batch": 4, "num_instances": 2,
            "num_workers": 0, "eval_batch_size": 16,
        },
        "model": {"name": "osnet_x0_25"},
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"max_epochs": 2, "eval_every": 0, "amp": False, "iters_per_epoch": 2, **train},
        "eval": {"max_rank": 5},
    })


def quiet(*_):
    pass


def test_resume_matches_uninterrupted_run(tmp_path):
    full = Trainer(tiny_config(), tmp_path / "full", log=quiet)
    full.fit()
    half = Trainer(tiny_config(max_epochs=1), tmp_path / "half", log=quiet)
    half.fit()
    with pytest.warns(UserWarning, match="differs"):  # max_epochs 1 -> 2
        resumed = Trainer(tiny_config(), tmp_path / "half", resume=True, log=quiet)
    assert resumed.epoch == 1
    resumed.fit()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{k} differs after resume")
    ckpt = load_checkpoint(tmp_path / "half" / "last.pt")
    assert ckpt["epoch"] == 2 and {"optimizer", "scheduler", "rng", "config"} <= set(ckpt)
    assert (tmp_path / "half" / "results.json").exists() and (tmp_path / "half" / "config.yaml").exists()


def test_existing_run_is_not_overwritten(tmp_path):
    Trainer(tiny_config(max_epochs=1), tmp_path, log=quiet).fit()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny_config(), tmp_path, log=quiet)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny_config(), tmp_path / "other", resume=True, log=quiet)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(max_epochs=3), tmp_path, log=quiet)
    real, calls = trainer.method.training_step, {"n": 0}

    def poisoned(batch):
        calls["n"] += 1
        total, parts = real(batch)
        return (total * float("nan") if calls["n"] == 3 else total), parts

    trainer.method.training_step = poisoned
    with pytest.raises(TrainingDiverged, match="epoch 2, iteration 1"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_wall_clock_budget_stops_training(tmp_path):
    results = Trainer(tiny_config(max_epochs=50, max_minutes=1e-6), tmp_path, log=quiet).fit()
    assert results["epochs"] == 1


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "ck.pt"
    atomic_save({"a": torch.ones(2)}, path)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_save({"a": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_lr_factor_schedules():
    step = SchedConfig(name="step", warmup_epochs=2, warmup_factor=0.1, milestones=[5, 8], gamma=0.1)
    assert [round(lr_factor(e, step, 10), 6) for e in range(10)] == [0.1, 0.55, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01]
    cos = SchedConfig(name="cosine", warmup_epochs=0)
    assert lr_factor(0, cos, 10) == 1.0
    assert math.isclose(lr_factor(5, cos, 10), 0.5)
    assert math.isclose(lr_factor(10, cos, 10), 0.0, abs_tol=1e-12)


def test_time_based_schedule(tmp_path):
    from reidkit.engine.config import ConfigError
    from reidkit.engine.trainer import schedule_epoch

    assert schedule_epoch(30.0, 1.0, 10) == 5.0
    assert schedule_epoch(120.0, 1.0, 10) == 10.0
    # a machine faster than the budget anneals by the epochs it has done
    assert schedule_epoch(30.0, 1.0, 10, epochs_done=7.5) == 7.5
    assert schedule_epoch(30.0, 1.0, 10, epochs_done=2.0) == 5.0
    assert schedule_epoch(1.0, 1.0, 10, epochs_done=12.0) == 10.0
    with pytest.raises(ConfigError, match="max_minutes"):
        schedule_epoch(1.0, None, 10)
    cfg = tiny_config(max_epochs=1000, max_minutes=0.05)
    cfg.sched.name, cfg.sched.by_time = "cosine", True
    trainer = Trainer(cfg, tmp_path, log=quiet)
    for spent, expected in [(0.0, 1.0), (1.5, 0.5), (3.0, 0.0)]:  # seconds of the 3-second budget
        trainer.elapsed = spent
        trainer._time_based_lr()
        assert math.isclose(trainer.optimizer.param_groups[0]["lr"], expected * cfg.optim.lr, abs_tol=1e-12)
    trainer.elapsed = 0.0
    trainer.fit()
    assert trainer.epoch < 1000 and trainer.elapsed >= 0.05 * 60  # the budget ended the run
