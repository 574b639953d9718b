"""The on-disk cache of a generated dataset: compressed image arrays, a CSV table and a metadata file holding
their SHA-256 checksums, written last (the commit): a set without a readable metadata file, or whose files
fail their checksums, is not complete. Used by the embedded Morpho-MNIST and the synthetic faces."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from imcf.io import atomic_write_bytes, atomic_write_text, atomic_write_yaml, read_yaml
from imcf.io import ensure_writable as io_ensure_writable

ARRAY_FILE = "images.npz"


class CacheError(RuntimeError):
    """A cached set is missing, incomplete or corrupted; the message names the file."""


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_writable(directory: Path, what: str) -> None:
    """Create `directory` and check that files can be written there, before minutes of generation are spent;
    raises `imcf.io.UnwritableDirError` (an OSError) naming the directory and the `data_root` setting."""
    io_ensure_writable(
        directory, f"the {what} cache", "set data_root=... (or the dataset's root) to a writable directory"
    )


def _write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    if path.suffix == ".json":
        atomic_write_text(path, json.dumps(meta, indent=1))
    else:
        atomic_write_yaml(path, dict(meta))


def _read_meta(path: Path) -> dict[str, Any]:
    meta = json.loads(path.read_text()) if path.suffix == ".json" else read_yaml(path)
    if not isinstance(meta, dict):
        raise CacheError(f"{path} does not hold a mapping")
    return meta


def save_set(
    directory: Path,
    arrays: Mapping[str, np.ndarray],
    table: pd.DataFrame,
    meta: Mapping[str, Any],
    table_file: str,
    meta_file: str,
    float_format: str | None = None,
) -> None:
    """Write `images.npz` (the arrays), `table_file` (CSV) and then `meta_file` (`meta` plus `sha256` of both;
    .json or .yaml), each atomically; a stale metadata file is removed first."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / meta_file).unlink(missing_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(directory / ARRAY_FILE, buf.getvalue())
    atomic_write_text(directory / table_file, table.to_csv(index=False, float_format=float_format))
    checks = {f: sha256(directory / f) for f in (ARRAY_FILE, table_file)}
    _write_meta(directory / meta_file, {**meta, "sha256": checks})


def load_set(
    directory: Path, table_file: str, meta_file: str, arrays: Sequence[str], **read_csv: Any
) -> tuple[dict[str, np.ndarray], pd.DataFrame, dict[str, Any]]:
    """Read and verify a set written by `save_set`: (arrays named `arrays`, table, metadata). Raises CacheError
    naming the file that is missing, unreadable or fails its checksum."""
    meta_path = directory / meta_file
    if not meta_path.is_file():
        raise CacheError(f"no complete cache in {directory} ({meta_file} missing)")
    try:
        meta = _read_meta(meta_path)
    except (OSError, ValueError) as e:
        raise CacheError(f"cannot read {meta_path}: {e}") from e
    checks = meta.get("sha256")
    if not isinstance(checks, Mapping) or set(checks) != {ARRAY_FILE, table_file}:
        raise CacheError(f"{meta_path} lists no checksums for {ARRAY_FILE} and {table_file}")
    for f, digest in checks.items():
        if not (directory / f).is_file():
            raise CacheError(f"cache file {directory / f} is missing")
        if sha256(directory / f) != digest:
            raise CacheError(f"checksum mismatch for {directory / f}: the cache is corrupted")
    try:
        with np.load(directory / ARRAY_FILE) as z:
            out = {k: z[k] for k in arrays}
        table = pd.read_csv(directory / table_file, **read_csv)
    except Exception as e:  # noqa: BLE001 - any read failure means a broken cache
        raise CacheError(f"cannot read cache in {directory}: {e}") from e
    return out, table, meta


__all__ = ["ARRAY_FILE", "CacheError", "load_set", "save_set", "sha256"]
