"""Shared test data (a module with a unique name: every test folder may have its own conftest)."""

TINY_RUN = {
    "data": {
        "name": "synthetic",
        "options": {"num_train_ids": 8, "num_test_ids": 4, "num_cameras": 2, "image_size": [32, 16],
                    "num_distractors": 2},
        "height": 32, "width": 16, "pad": 2, "num_pids_per_batch": 4, "num_instances": 2,
        "num_workers": 0, "eval_batch_size": 16,
    },
    "model": {"name": "osnet_x0_25"},
    "optim": {"name": "adam", "lr": 1e-3},
    "train": {"max_epochs": 1, "iters_per_epoch": 2, "eval_every": 0, "amp": False},
    "eval": {"max_rank": 5},
}
