"""Nothing the user has is lost or mixed; resume is exact whenever the run was stopped."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from reidkit.cli import main
from reidkit.engine.checkpoint import atomic_save
from reidkit.engine.config import config_from_dict
from reidkit.engine.trainer import Trainer
from reidkit.fileio import OutputError, atomic_write_text, ensure_writable_dir

from reidkit_testing import TINY_RUN


def quiet(*_):
    pass


def config(**train):
    data = {**TINY_RUN, "train": {**TINY_RUN["train"], **train}}
    return config_from_dict(yaml.safe_load(yaml.safe_dump(data)))


def test_non_empty_output_is_refused_and_left_untouched(tmp_path, tiny_config_file, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("my own notes")
    (run / "results.json").write_text('{"mine": 1}')
    assert main(["train", str(tiny_config_file), "--output", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (run / "config.yaml").read_text() == "my own notes"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "results.json"]
    assert main(["train", str(tiny_config_file), "--output", str(run), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", str(tiny_config_file), "--output", str(run), "--resume", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_overwrite_replaces_only_run_files(tmp_path, tiny_config_file):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 9}\n' * 3)
    (run / "notes.txt").write_text("keep me")
    assert main(["train", str(tiny_config_file), "--output", str(run), "--overwrite"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x.get("epoch") for x in lines if not x.get("final")] == [1]
    assert (run / "notes.txt").read_text() == "keep me"


def test_stale_temporaries_are_removed_on_start(tmp_path):
    run = tmp_path / "run"
    Trainer(config(), run, log=quiet).fit()
    stale = [run / ".last.pt.abc123.tmp", run / ".peer0.pt.x.tmp"]
    for path in stale:
        path.write_bytes(b"x" * 100)
    Trainer(config(max_epochs=2), run, resume=True, log=quiet)
    assert not any(p.exists() for p in stale)


def test_write_failures_are_one_line_errors(tmp_path, monkeypatch):
    target = tmp_path / "ck.pt"
    atomic_save({"a": torch.ones(1)}, target)
    before = target.read_bytes()

    def full_disk(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputError, match="ck.pt.*No space left"):
        atomic_save({"a": torch.zeros(1000)}, target)
    with pytest.raises(OutputError, match="results.json"):
        atomic_write_text(tmp_path / "results.json", "{}")
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["ck.pt"]


def test_disk_full_during_a_checkpoint_write_is_one_line(tmp_path, monkeypatch):
    """The disk fills up part-way through the checkpoint's bytes (what torch's own zip writer
    reported as "unexpected pos ..."): one line naming the file, the old checkpoint kept."""
    target = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(1)}, target)
    before = target.read_bytes()
    real_fdopen = os.fdopen

    class FillsUp:
        def __init__(self, handle):
            self.handle, self.room = handle, 4096

        def write(self, data):
            data = memoryview(data).cast("B")
            if len(data) > self.room:
                self.handle.write(data[: self.room])
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: FillsUp(real_fdopen(fd, mode, *a, **k)))
    with pytest.raises(OutputError, match="last.pt.*No space left"):
        atomic_save({"a": torch.zeros(100_000)}, target)
    monkeypatch.undo()
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """mkstemp makes 0600 files; what reidkit writes gets the mode a plain open() gives (the
    umask's), and a replaced file keeps its own."""
    old = os.umask(0o022)
    try:
        fresh = atomic_write_text(tmp_path / "results.json", "{}")
        assert fresh.stat().st_mode & 0o777 == 0o644
        fresh.chmod(0o640)
        atomic_write_text(fresh, "{}")
        assert fresh.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_read_only_output_is_refused_before_work(tmp_path, monkeypatch, tiny_run, capsys):
    import tempfile

    def read_only(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(OutputError, match="not writable: Read-only"):
        ensure_writable_dir(tmp_path / "out")
    code = main(["eval", "--checkpoint", str(tiny_run / "last.pt"), "--json", str(tmp_path / "ro" / "m.json")])
    captured = capsys.readouterr()
    assert code == 2 and "Read-only" in captured.err and "rank1=" not in captured.out  # no work was done


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder_for_real(tmp_path, tiny_config_file, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["train", str(tiny_config_file), "--output", str(ro / "run")]) == 2
        assert "ro" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def _stop_at(trainer, epoch):
    """Make ``trainer`` die right after saving the checkpoint of ``epoch`` (before its log line)."""
    real = trainer._append_log

    def append(record):
        if record.get("epoch") == epoch:
            raise KeyboardInterrupt("killed")
        real(record)

    trainer._append_log = append


def test_resume_is_bit_exact_from_every_epoch(tmp_path):
    """Stopped after the checkpoint of each epoch (evaluation epochs included), the resumed run
    ends with exactly the weights and log of the uninterrupted run."""
    kw = dict(max_epochs=4, eval_every=2)
    full = Trainer(config(**kw), tmp_path / "full", log=quiet)
    full.fit()
    reference = full.model.state_dict()
    ref_log = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    timing = {"seconds", "images_per_s", "elapsed_minutes", "train_minutes"}

    def untimed(records):
        return [{k: v for k, v in r.items() if k not in timing} for r in records]

    for stop in (1, 2, 3, 4):
        run = tmp_path / f"stop{stop}"
        trainer = Trainer(config(**kw), run, log=quiet)
        _stop_at(trainer, stop)
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
        resumed = Trainer(config(**kw), run, resume=True, log=quiet)
        assert resumed.epoch == stop
        resumed.fit()
        for key, value in reference.items():
            assert torch.equal(value, resumed.model.state_dict()[key]), f"stop {stop}: {key} differs"
        log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        # every line, evaluation metrics of the evaluation epochs included, as in the full run
        assert untimed(log) == untimed(ref_log), f"stop {stop}"
        assert "mAP" in log[1] and log[-1]["final"]


def test_sigkill_then_resume_matches(tmp_path, tiny_config_file):
    """A real ``kill -9`` of ``reidkit train`` once its first checkpoint exists; resume finishes
    with the uninterrupted run's weights, and the log has each epoch once."""
    cfg = yaml.safe_load(tiny_config_file.read_text())
    cfg["train"].update(max_epochs=6, iters_per_epoch=3, eval_every=2)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(cfg_file), "--output", str(tmp_path / "full")]) == 0
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "reidkit", "train", str(cfg_file), "--output", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["train", str(cfg_file), "--output", str(run), "--resume"]) == 0
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads(x).get("epoch") for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs[:-1] == list(range(1, 7))
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resume_with_another_model_is_a_clear_error(tmp_path, tiny_config_file, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_config_file), "--output", str(run)]) == 0
    assert main(["train", str(tiny_config_file), "--output", str(run), "--resume",
                 "--set", "model.name=mobilenet_v2", "--set", "train.max_epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "osnet_x0_25" in err and "mobilenet_v2" in err


def test_non_finite_embeddings_stop_as_divergence(tmp_path, tiny_config_file, capsys, monkeypatch):
    """A run whose model ends with NaN weights stops with one line, not 'distmat contains NaN'."""
    from reidkit.engine import trainer as trainer_module

    real = trainer_module.Trainer.train_one_epoch

    def poison(self):
        record = real(self)
        with torch.no_grad():
            for p in self.model.parameters():
                p.fill_(float("nan"))
        return record

    monkeypatch.setattr(trainer_module.Trainer, "train_one_epoch", poison)
    assert main(["train", str(tiny_config_file), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "diverged" in err and "NaN" in err


def test_extract_train_split_keeps_file_pids(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    root = tmp_path / "ds"
    for split, names in (("train", ["0007_c1_0.png", "0007_c2_0.png", "0042_c1_0.png"]),
                         ("query", ["0003_c1_0.png"]), ("gallery", ["0003_c2_0.png"])):
        (root / split).mkdir(parents=True)
        for name in names:
            Image.fromarray(np.zeros((32, 16, 3), dtype=np.uint8)).save(root / split / name)
    out = tmp_path / "f.npz"
    assert main(["extract", "--model", "osnet_x0_25", "--dataset", "folder", "--root", str(root),
                 "--splits", "train", "query", "--output", str(out), "--set", "data.height=32",
                 "--set", "data.width=16"]) == 0
    data = np.load(out)
    assert data["pids"].tolist() == [7, 7, 42, 3] and list(data["splits"]) == ["train"] * 3 + ["query"]
