"""The SLURM files work as written: log folder, data prepared once, signal before the time limit, requeue.

`sbatch` and `srun` are replaced by recorders on PATH; the commands they would run are composed and validated."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from imcf.config import TrainConfig, validate
from imcf.training import train
from tests.training.test_train import _cfg

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "configs" / "slurm"
TRAINING = ["units_array.sbatch", "ddp_multinode.sbatch"]


def _directives(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in (SLURM / name).read_text().splitlines() if line.startswith("#SBATCH")]


@pytest.mark.parametrize("name", sorted(p.name for p in SLURM.glob("*.sbatch")))
def test_every_job_logs_into_logs_appends_across_requeues_and_may_be_requeued(name):
    lines = _directives(name)
    assert any(d.startswith("--output=logs/") for d in lines)
    assert "--open-mode=append" in lines and "--requeue" in lines
    if name in TRAINING:  # SIGTERM before the time limit: the last epoch is saved and the job requeues itself
        assert any(d.startswith("--signal=TERM@") and int(d.split("@")[1]) >= 60 for d in lines), lines


def _recorders(tmp_path: Path) -> dict[str, str]:
    """`sbatch` prints a new job id per call, `srun` nothing; both append their arguments to calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "sbatch $*" >> {log}\necho $((100 + $(wc -l < {log})))\n')
    (bin_dir / "srun").write_text(f'#!/bin/bash\nprintf "%q " srun "$@" >> {log}\necho >> {log}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}"}


def _train_args(srun_line: str) -> list[str]:
    words = shlex.split(srun_line)
    assert words[:3] == ["srun", "python", "train.py"], words
    return words[3:]


def _validate(args: list[str]) -> None:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        validate(compose(config_name="train", overrides=args), TrainConfig)


def test_units_array_submits_prepare_then_units_then_evaluate(tmp_path):
    env = _recorders(tmp_path)
    script = str(SLURM / "units_array.sbatch")
    proc = subprocess.run(["bash", script, "seed=3"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "logs").is_dir()  # created before anything is submitted
    prepare, units, evaluate = (tmp_path / "calls.log").read_text().splitlines()
    assert (
        prepare.startswith("sbatch --parsable configs/slurm/prepare.sbatch graph=morphomnist") and "seed=3" in prepare
    )
    assert units == f"sbatch --parsable --dependency=afterok:101 --array=0-3 {script} seed=3"
    assert (
        evaluate == "sbatch --parsable --dependency=afterok:102 configs/slurm/evaluate.sbatch run_dir=runs/morphomnist"
    )

    # the array task SLURM then runs (task 3 of 0-3) and the prepare job
    (tmp_path / "calls.log").unlink()
    env = {**env, "SLURM_JOB_ID": "102", "SLURM_ARRAY_TASK_ID": "3"}
    subprocess.run(["bash", script, "seed=3"], cwd=tmp_path, env=env, check=True)
    args = _train_args((tmp_path / "calls.log").read_text())
    assert args[-3:] == ["seed=3", "units=[image]", "evaluate_after=false"]
    _validate(args)
    (tmp_path / "calls.log").unlink()
    subprocess.run(
        ["bash", str(SLURM / "prepare.sbatch"), *shlex.split(prepare)[3:]], cwd=tmp_path, env=env, check=True
    )
    args = _train_args((tmp_path / "calls.log").read_text())
    assert args[-1] == "prepare_only=true"
    _validate(args)


def test_ddp_job_prepares_the_data_first(tmp_path):
    env = _recorders(tmp_path)
    script = str(SLURM / "ddp_multinode.sbatch")
    subprocess.run(["bash", script], cwd=tmp_path, env=env, check=True, capture_output=True)
    prepare, job = (tmp_path / "calls.log").read_text().splitlines()
    assert prepare.startswith("sbatch --parsable configs/slurm/prepare.sbatch") and "trainer=ddp" in prepare
    assert job == f"sbatch --parsable --dependency=afterok:101 {script}"
    assert (tmp_path / "logs").is_dir()
    (tmp_path / "calls.log").unlink()
    subprocess.run(["bash", script], cwd=tmp_path, env={**env, "SLURM_JOB_ID": "102"}, check=True)
    _validate(_train_args((tmp_path / "calls.log").read_text()))


def test_prepare_only_builds_the_dataset_and_trains_nothing(tmp_path):
    result = train(_cfg(tmp_path, "prepare_only=true"))
    assert result == {"dataset": {"train": 2000, "val": 200, "test": 200}}
    assert not (tmp_path / "run").exists()  # (this dataset is generated in memory: no cache to see)
