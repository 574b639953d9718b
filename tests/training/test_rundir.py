"""Run directories: one configuration each, distinct per multirun job, one live writer per unit."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imcf.config import ConfigError
from imcf.training import train
from imcf.training.rundir import config_differences, unit_lock
from tests.training.test_train import _cfg

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["units=[x1]", "trainer.max_epochs=1", "evaluate_after=false"]


def test_resume_refuses_another_configuration_and_names_the_keys(tmp_path):
    old = os.umask(0o002)  # a group-shared project folder
    try:
        train(_cfg(tmp_path, *QUICK))
    finally:
        os.umask(old)
    run = tmp_path / "run"
    for path in (run / "config.yaml", run / "x1.ckpt", run / "checkpoints" / "x1" / "last.ckpt"):
        assert path.stat().st_mode & 0o777 == 0o664, path  # ours and Lightning's files: the umask, not 0600
    with pytest.raises(ConfigError, match=r"\(optim.lr: 0.01 -> 0.02, seed: 0 -> 1\)"):
        train(_cfg(tmp_path, *QUICK, "seed=1", "optim.lr=0.02"))
    # what may change on resume does not count: more epochs, other units, logging, evaluation
    train(_cfg(tmp_path, "units=[x2]", "trainer.max_epochs=2", "evaluate_after=false", "logger=tensorboard"))


def test_a_config_that_failed_before_training_does_not_block_its_correction(tmp_path):
    """A dataset option that fails when the data are built (Morpho-MNIST's `num_samples=-3`, here a negative split
    size) failed after config.yaml was written; the corrected command was then refused as "another
    configuration" although nothing had trained."""
    bad = "dataset.options.sizes={train: -5, val: 200, test: 200}"
    with pytest.raises(ConfigError, match=r"dataset.options.sizes.train must be a whole number >= 1, got -5"):
        train(_cfg(tmp_path, *QUICK, bad))
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and not list(run.rglob("*.ckpt"))
    train(_cfg(tmp_path, *QUICK))  # accepted, and its config replaces the failed one
    assert (run / "x1.ckpt").is_file()
    with pytest.raises(ConfigError, match="another configuration"):  # once a unit has trained, the guard holds
        train(_cfg(tmp_path, *QUICK, "dataset.options.sizes={train: 1000, val: 200, test: 200}"))


def test_config_differences_leave_out_keys_that_may_change():
    a = {"seed": 0, "trainer": {"max_epochs": 3, "precision": "32"}, "unit_overrides": {"x": {"trainer": {}}}}
    b = {"seed": 0, "trainer": {"max_epochs": 9, "precision": "16"}, "unit_overrides": {"x": {"trainer": {}}}}
    assert config_differences(a, b) == ["trainer.precision"]
    b["unit_overrides"]["x"]["trainer"]["max_epochs"] = 5
    b["unit_overrides"]["x"]["optim"] = {"lr": 1.0}
    assert config_differences(a, b) == ["trainer.precision", "unit_overrides.x.optim.lr"]


def _lock_text(pid: int, host: str | None = None, job: str | None = None) -> str:
    return json.dumps({"host": host or socket.gethostname(), "pid": pid, "slurm_job": job, "since": "t"})


def test_lock_refuses_a_live_writer_and_breaks_a_dead_ones_lock(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    lock = tmp_path / "train.lock"
    lock.write_text(_lock_text(os.getppid()))  # a live process of this host
    with pytest.raises(RuntimeError, match=f"held by a live training .*pid {os.getppid()}") as refused:
        with unit_lock(lock):
            pass
    assert isinstance(refused.value, ConfigError)  # a user error: the entry points print one `error:` line
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(_lock_text(dead.pid))
    with unit_lock(lock):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists() and not list(tmp_path.glob("*.stale.*"))
    # another host: liveness cannot be checked, so it is refused ...
    lock.write_text(_lock_text(1, host="elsewhere", job="77"))
    with pytest.raises(RuntimeError, match="another host"):
        with unit_lock(lock):
            pass
    # ... unless it is an earlier run of this (requeued) SLURM job
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with unit_lock(lock):
        pass


def test_an_empty_or_cut_short_lock_is_waited_on_briefly_then_broken(tmp_path):
    """A process that died between creating the lock and writing its owner left an empty (or half-written) file:
    it blocked the unit for good, as 'held by a live training (host None, pid None)' or 'keeps changing hands'.
    A fresh one is being written by its owner: waited on; an old one is broken."""
    lock = tmp_path / "train.lock"
    for text in ("", '{"host": "a", "pi'):
        lock.write_text(text)
        old = time.time() - 60
        os.utime(lock, (old, old))
        with unit_lock(lock):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert not lock.exists()
    lock.write_text("")  # young: its owner is writing it; it is done within the wait
    timer = threading.Timer(0.3, lambda: lock.write_text(_lock_text(os.getppid())))
    timer.start()
    with pytest.raises(RuntimeError, match=f"held by a live training .*pid {os.getppid()}"):
        with unit_lock(lock):
            pass
    timer.join()


def test_a_second_live_writer_is_refused_before_training(tmp_path):
    lock = tmp_path / "run" / "checkpoints" / "x1" / "train.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(_lock_text(os.getppid()))
    with pytest.raises(RuntimeError, match="held by a live training"):
        train(_cfg(tmp_path, *QUICK))
    assert lock.is_file()  # the other writer's lock is left alone


def test_multirun_jobs_get_distinct_run_directories_and_the_console_is_clean(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "experiment=linear4",
            "seed=0,1",
            *QUICK,
            f"data_root={tmp_path / 'data'}",
            "dataset.options.sizes={train: 256, val: 64, test: 64}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # the console: each Lightning line once (two jobs of one unit each), no vendor tips, the unit in the progress bar
    assert out.count("GPU available: False") == 2 and "Tip:" not in out, out[-6000:]
    assert "x1 epoch 0: 100%" in out
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(runs) == 2 and runs[0].endswith("seed=0") and runs[1].endswith("seed=1"), runs
    for name, seed in zip(runs, (0, 1)):
        assert f"seed: {seed}\n" in (tmp_path / "runs" / name / "config.yaml").read_text()
        assert (tmp_path / "runs" / name / "x1.ckpt").is_file()
