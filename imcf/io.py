"""Checkpoint and file I/O: atomic, fsynced writes with the user's umask; safe loads."""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
import yaml


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class MissingFileError(FileNotFoundError):
    """A file that a setting or a dataset release should provide is missing; the message names it (and the
    setting). A user error: the entry points print it as one line."""


class MalformedFileError(ValueError):
    """A file that should hold settings (YAML) cannot be parsed; the message names the file and the place."""


class UnwritableDirError(OSError):
    """A directory that a setting chose cannot be created or written; the message names the setting."""


def ensure_writable(directory: str | Path, what: str, hint: str, create: bool = True) -> None:
    """Check that files can be written in `directory` before any work is spent; raises `UnwritableDirError`
    naming what is written there, the directory, the reason and `hint` (the setting). `create=False` leaves the
    file system as it was: a missing directory passes if its nearest existing ancestor is a writable directory."""
    directory = Path(directory)
    try:
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a directory", str(directory))
        if create or directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")  # unique: DDP ranks probe at once
            os.close(fd)
            os.unlink(probe)
            return
        base = next(p for p in directory.absolute().parents if p.exists())
        if not base.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(base))
        if not os.access(base, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(base))
    except OSError as e:
        raise UnwritableDirError(f"cannot write {what} under {directory} ({e.strerror or e}): {hint}") from None


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A file object whose content appears at `path` only when the block ends without error.

    The temporary file sits beside `path` (an atomic rename on the same filesystem, also on network storage), is
    created with the mode `open()` would give (0666 minus the umask, not mkstemp's 0600, so colleagues sharing the
    folder can read it), and is fsynced before the rename; the directory is fsynced after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; some filesystems cannot open a directory for that, which is fine."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and an atomic rename."""
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_yaml(path: str | Path, obj: Any) -> Path:
    """Atomically write plain data as YAML."""
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    with atomic_file(path) as f:
        torch.save(obj, f)
    return Path(path)


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not belong to the model; the message names the file."""


def safe_torch_load(path: str | Path, map_location: str | torch.device | None = "cpu", recover: str = "") -> Any:
    """torch.load with weights_only=True (tensors and plain containers only); clear error if absent or unreadable.

    `recover` says how to get a good file back; it ends the error of a damaged checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, overwritten, not torch's: the unpickler fails in many ways on garbage
        text = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        known = isinstance(e, RuntimeError | EOFError | OSError | pickle.UnpicklingError) and text
        reason = text if known else f"{type(e).__name__}{': ' + text if text else ''}"
        raise CheckpointError(
            f"cannot read checkpoint {path} ({reason}): the file is damaged or not a checkpoint"
            + (f"; {recover}" if recover else "")
        ) from None


def read_yaml(path: str | Path) -> Any:
    """Load a YAML file with a clear error when it is missing or not valid YAML (`MalformedFileError`)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"expected YAML file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise MalformedFileError(f"{path} is not valid YAML ({problem}{at}): fix or restore the file") from None
