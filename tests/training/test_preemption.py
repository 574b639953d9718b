"""Pre-emption: SIGTERM to a real `train.py` saves the last epoch, exits 143, requeues under SLURM, resumes exactly."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from imcf.training import train
from imcf.training.preemption import requeue, slurm_job_id
from tests.training.test_train import _cfg

ROOT = Path(__file__).resolve().parents[2]
RUN = ["experiment=linear4", "units=[x4]", "trainer.max_epochs=4", "dataset.batch_size=16", "evaluate_after=false"]


def _fake_scontrol(tmp_path: Path) -> Path:
    """An `scontrol` on PATH that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    script.chmod(0o755)
    return bin_dir


def test_sigterm_saves_last_epoch_exits_143_requeues_and_resumes_exactly(tmp_path):
    run = tmp_path / "b" / "run"
    args = [
        *RUN,
        f"run_dir={run}",
        f"data_root={tmp_path / 'b' / 'data'}",
        "trainer.enable_progress_bar=false",
        "dataset.options.sizes={train: 2000, val: 200, test: 200}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SLURM_JOB_ID": "4242",
        "PATH": f"{_fake_scontrol(tmp_path)}:{os.environ['PATH']}",
    }
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    last = run / "checkpoints" / "x4" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM" in out and "requeued SLURM job 4242" in out, out[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    epoch = torch.load(last, weights_only=True)["epoch"]
    assert epoch < 3 and not (run / "x4.ckpt").exists()  # stopped mid-run, its last completed epoch saved

    resumed = train(_cfg(tmp_path / "b", *RUN))
    full = train(_cfg(tmp_path / "a", *RUN))
    a = torch.load(full["units"]["x4"], weights_only=True)["state_dict"]["x4"]
    b = torch.load(resumed["units"]["x4"], weights_only=True)["state_dict"]["x4"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for ckpt in (last, Path(full["run_dir"]) / "checkpoints" / "x4" / "last.ckpt"):
        assert torch.load(ckpt, weights_only=True)["epoch"] == 3  # last.ckpt follows every epoch
    # the CSV history is continued, with each epoch's validation row exactly once
    rows = list(csv.DictReader((run / "logs" / "x4" / "version_0" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows if r.get("val/loss")] == [0, 1, 2, 3]


def test_requeue_names_the_array_task(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_scontrol(tmp_path)}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert slurm_job_id() is None and requeue() == ""
    monkeypatch.setenv("SLURM_JOB_ID", "10")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert requeue() == "requeued SLURM job 7_3"
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert "rank 0" in requeue()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "7_3"]


def test_sigterm_to_the_process_group_during_data_generation_stops_cleanly(tmp_path):
    """`timeout`, `scancel` and a terminal's job control signal the whole process group: the rendering pool's
    workers ignore it (before, two died, the pool replaced them and train.py waited forever for their chunks),
    the parent finishes the dataset (cached, not lost) and stops with 143."""
    data = tmp_path / "data"
    args = [
        "experiment=morphomnist",
        "dataset.options.num_samples=400",
        "dataset.options.workers=2",
        "trainer.max_epochs=1",
        "evaluate_after=false",
        "trainer.enable_progress_bar=false",
        f"run_dir={tmp_path / 'run'}",
        f"data_root={data}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as under `timeout` or a batch system
    )
    seen = []
    for line in proc.stdout:  # the first progress line: the pool is running
        seen.append(line.decode())
        if "rendered" in seen[-1]:
            break
    assert proc.poll() is None, "".join(seen)[-3000:]
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        out = "".join(seen) + proc.communicate(timeout=300)[0].decode()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("train.py hung after SIGTERM to its process group") from None
    assert proc.returncode == 143, out[-3000:]
    assert "stopped by SIGTERM" in out, out[-3000:]
    assert "rendered 400/400 digits" in out  # the pool finished its work: the dataset is cached, not lost
    assert list((data / "morphomnist").glob("*/meta.yaml")), list((data / "morphomnist").rglob("*"))
