"""A run directory belongs to one configuration and has one live writer per unit."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from imcf.config import ConfigError
from imcf.io import read_yaml


class RunDirLocked(ConfigError, RuntimeError):
    """A unit's lock is held by a live writer: a user error (one `error:` line from the entry points)."""


# keys that may change between two starts of one run: when to stop, what to train now, where things live,
# how to log and evaluate. Everything else defines the model and its training, and must match to resume.
MAY_CHANGE = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "unit_overrides.*.trainer.max_epochs",
    "early_stopping.*",
    "unit_overrides.*.early_stopping.*",
    "units",
    "units.*",
    "resume",
    "threads",
    "requeue",
    "prepare_only",
    "evaluate_after",
    "evaluate.*",
    "identify.*",
    "logger.*",
    "run_dir",
    "data_root",
    "dataset.root",
    "dataset.num_workers",
    "dataset.eval_batch_size",
)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted key (an empty mapping adds none: `{}` and absent mean the same)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, leaving out the keys in MAY_CHANGE."""
    a, b = _flatten(stored), _flatten(current)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    return [k for k in keys if not any(fnmatchcase(k, pattern) for pattern in MAY_CHANGE)]


def has_started(run_dir: Path) -> bool:
    """Whether any unit of the run has begun training (a checkpoint or a unit's lock file is there); a run
    directory holding only the files of a configuration that failed before training has nothing to mix with."""
    return any(p.suffix in (".ckpt", ".lock") for p in run_dir.rglob("*"))


def check_stored_config(run_dir: Path, current: dict[str, Any]) -> None:
    """Refuse a run directory whose `config.yaml` was written by another configuration (the keys are named)."""
    path = run_dir / "config.yaml"
    if not path.is_file() or not has_started(run_dir):
        return
    diff = config_differences(read_yaml(path) or {}, current)
    if diff:
        a, b = _flatten(read_yaml(path) or {}), _flatten(current)
        shown = ", ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in diff[:8])
        more = f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""
        raise ConfigError(
            f"{run_dir} holds a run of another configuration ({shown}{more}); resuming it would mix the two. "
            f"Use a new run_dir=..., or delete the old run. Keys that may change on resume: {', '.join(MAY_CHANGE)}"
        )


def _owner() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner_is_gone(owner: dict[str, Any]) -> bool:
    """The lock's owner is dead: its PID is gone on this host, or it was an earlier run of this SLURM job
    (a requeued job keeps its id, and SLURM ends a job's processes before it runs again)."""
    me = _owner()
    if owner.get("slurm_job") and owner.get("slurm_job") == me["slurm_job"] and owner.get("pid") != me["pid"]:
        return True
    return owner.get("host") == me["host"] and not _pid_alive(int(owner.get("pid", -1)))


#: seconds after which an empty or unreadable lock file counts as left by a process that died while writing it
EMPTY_LOCK_GRACE_S = 2.0


@contextmanager
def unit_lock(path: Path) -> Iterator[None]:
    """Hold `path` (created with O_EXCL) while training a unit; a lock whose owner is dead is broken safely."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                text = path.read_text()
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try again
            try:
                owner = json.loads(text) if text.strip() else None
            except json.JSONDecodeError:
                owner = None
            if not isinstance(owner, dict) or not owner:
                # empty or cut short: being written by its owner this very moment, or left by a process that died
                # between creating and writing it (then nothing will ever fill it in)
                if age < EMPTY_LOCK_GRACE_S:
                    time.sleep(0.1)
                    continue
                _break(path, text)
                continue
            if not _owner_is_gone(owner):
                raise RunDirLocked(
                    f"{path} is held by a live training (host {owner.get('host')}, pid {owner.get('pid')}, "
                    f"SLURM job {owner.get('slurm_job')}, since {owner.get('since')}): two writers would corrupt "
                    f"this unit's checkpoints and logs. Wait for it, or use another run_dir; if that process is "
                    f"gone (another host), delete the lock file."
                ) from None
            _break(path, text)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
        break
    else:
        raise RunDirLocked(f"could not take the lock {path}: it keeps changing hands")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _break(path: Path, stale: str) -> None:
    """Move a dead owner's lock aside; if another process replaced it meanwhile, put theirs back."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if aside.read_text() != stale:  # a live lock taken after our read: restore it (unless yet another exists)
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return
    aside.unlink(missing_ok=True)
    print(f"[imcf] broke the lock {path} of a process that is gone ({stale.strip()})", flush=True)
