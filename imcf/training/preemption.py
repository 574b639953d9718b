"""Pre-emption: SIGTERM (a SLURM time limit, pre-emption or `scancel`) stops training with a non-zero exit.

Inside a Lightning fit the signal is Lightning's: it stops after the current batch, and the unit's `last.ckpt`
(written after every epoch) holds the last completed epoch. Outside a fit (data generation, saving, evaluation)
the handler raises at once. Either way `train` raises `Preempted`, a `SystemExit` with code 143 (128 + SIGTERM),
so an `afterok` dependency never starts on an unfinished run; under SLURM the job is requeued first.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_CODE = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """Training stopped by SIGTERM; the message says what was saved and how to resume."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SignalGuard:
    """Records SIGTERM; raises `Preempted` from the handler unless a Lightning fit is running (Lightning stops it)."""

    def __init__(self) -> None:
        self.received = False
        self.fitting = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        if not self.fitting:
            raise Preempted("stopped by SIGTERM between units; rerun the same command to resume")

    @contextmanager
    def fit(self) -> Iterator[None]:
        """Mark a Lightning fit: Lightning's own handler (which calls this one too) ends it after the batch."""
        self.fitting = True
        try:
            yield
        finally:
            self.fitting = False


@contextmanager
def sigterm_guard() -> Iterator[SignalGuard]:
    """Install the SIGTERM handler for the duration of a training run (main thread only, as Python requires)."""
    guard = SignalGuard()
    try:
        previous = signal.signal(signal.SIGTERM, guard.handle)
    except ValueError:  # not the main thread: leave signals alone
        yield guard
        return
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, previous)


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else the job id; None off SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue() -> str:
    """Requeue this SLURM job (once, from global rank 0); returns what was done, for the log line."""
    job = slurm_job_id()
    if job is None:
        return ""
    if int(os.environ.get("SLURM_PROCID", "0")) != 0 or int(os.environ.get("RANK", "0")) != 0:
        return f"SLURM job {job}: rank 0 requeues it"
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not requeue SLURM job {job}: {e}"
    if proc.returncode != 0:
        return f"could not requeue SLURM job {job}: scontrol: {(proc.stderr or proc.stdout).strip()}"
    return f"requeued SLURM job {job}"
