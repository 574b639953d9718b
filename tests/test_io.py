"""File writes: atomic, fsynced, with the mode `open()` would give under the user's umask."""

import os

import pytest
import torch

from imcf import io
from imcf.io import atomic_torch_save, atomic_write_text, current_umask, safe_torch_load


@pytest.fixture
def umask():
    """Set a umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_get_the_umask_mode_not_0600(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    text = atomic_write_text(tmp_path / "a" / "report.md", "hello")
    ckpt = atomic_torch_save({"w": torch.ones(2)}, tmp_path / "a" / "unit.ckpt")
    for path in (text, ckpt):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, oct(path.stat().st_mode)
    assert torch.equal(safe_torch_load(ckpt)["w"], torch.ones(2))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["report.md", "unit.ckpt"]  # no temporary left


def test_checkpoints_are_fsynced_and_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "unit.ckpt")
    assert len(synced) == 2  # the file, then its directory (the rename)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"w": Unpicklable()}, path)
    assert torch.equal(safe_torch_load(path)["w"], torch.zeros(1))
    assert [p.name for p in tmp_path.iterdir()] == ["unit.ckpt"]


def test_ensure_writable_names_the_setting_and_creates_nothing_when_asked(tmp_path):
    from imcf.io import UnwritableDirError, ensure_writable

    blocked = tmp_path / "a_file"
    blocked.write_text("")
    for create in (True, False):
        with pytest.raises(
            UnwritableDirError, match=r"cannot write the run under .*a_file/x/y \(Not a directory\): set run_dir"
        ):
            ensure_writable(blocked / "x" / "y", "the run", "set run_dir=...", create=create)
    ensure_writable(tmp_path / "new" / "run", "the run", "set run_dir=...", create=False)
    assert not (tmp_path / "new").exists()  # checked, not created
    ensure_writable(tmp_path / "made", "the run", "set run_dir=...")
    assert (tmp_path / "made").is_dir() and not list((tmp_path / "made").iterdir())  # the probe file is gone
    ensure_writable(tmp_path / "made", "the run", "set run_dir=...", create=False)
    assert not list((tmp_path / "made").iterdir())


def test_a_run_directory_that_is_a_file_is_named(tmp_path):
    """run_dir=<an existing file>: refused up front (it passed the check and failed with FileExistsError later)."""
    from imcf.io import UnwritableDirError, ensure_writable

    blocked = tmp_path / "notes.txt"
    blocked.write_text("")
    for create in (True, False):
        with pytest.raises(UnwritableDirError, match=r"notes.txt \(it is a file, not a directory\): set run_dir"):
            ensure_writable(blocked, "the run", "set run_dir=...", create=create)
    assert blocked.read_text() == ""


def test_any_garbage_in_a_checkpoint_file_is_a_checkpoint_error(tmp_path):
    """Text or random bytes where a checkpoint should be: one CheckpointError naming the file, whatever the
    unpickler raised (a text file gave a bare KeyError: 101; random bytes IndexError, UnicodeDecodeError)."""
    from imcf.io import CheckpointError

    path = tmp_path / "last.ckpt"
    path.write_text("hello world\n")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*last.ckpt \(KeyError: 101\).*; rerun"):
        safe_torch_load(path, recover="rerun")
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        size = int(torch.randint(1, 400, (1,), generator=gen))
        path.write_bytes(bytes(torch.randint(0, 256, (size,), generator=gen).tolist()))
        with pytest.raises(CheckpointError, match="the file is damaged or not a checkpoint"):
            safe_torch_load(path)


def test_a_malformed_yaml_file_is_named_with_the_place(tmp_path):
    from imcf.io import MalformedFileError, read_yaml

    path = tmp_path / "config.yaml"
    path.write_text("a: 1\ndataset: [unclosed\n")
    with pytest.raises(MalformedFileError, match=r"config.yaml is not valid YAML \(.* at line 3, column 1\)"):
        read_yaml(path)
    path.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(MalformedFileError, match="config.yaml is not valid YAML"):
        read_yaml(path)
