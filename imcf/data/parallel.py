"""Rendering many images over a process pool, in order, with progress lines (Morpho-MNIST and faces)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def report(label: str | None, done: int, total: int, unit: str) -> None:
    """`[imcf] <label>: rendered k/N <unit>` when a label is given."""
    if label:
        print(f"[imcf] {label}: rendered {done:,}/{total:,} {unit}", flush=True)


def map_chunks(
    fn: Callable[[T], R],
    chunks: Sequence[T],
    sizes: Sequence[int],
    workers: int,
    progress: str | None = None,
    unit: str = "images",
) -> list[R]:
    """[fn(c) for c in chunks], over `workers` spawned processes when > 1, reporting about ten progress lines.

    Spawn, not fork: the caller (train.py) already runs torch / Lightning threads, and a forked child can inherit
    a lock held by one of them and hang forever (seen with `python train.py` on 2 cores). Inside a daemon
    process (e.g. a DataLoader worker), which may not have children, it runs serially."""
    total, done, out = sum(sizes), 0, []
    every = max(1, -(-len(chunks) // 10))  # at most ten lines
    if workers <= 1 or multiprocessing.current_process().daemon:
        results = map(fn, chunks)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(fn, chunks)  # in order, as they finish
    try:
        for i, r in enumerate(results):
            out.append(r)
            done += sizes[i]
            if (i + 1) % every == 0 or i + 1 == len(chunks):
                report(progress, done, total, unit)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return out
