"""Rendering many images over a process pool, in order, with progress lines (Morpho-MNIST and faces)."""

from __future__ import annotations

import functools
import multiprocessing
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def report(label: str | None, done: int, total: int, unit: str) -> None:
    """`[imcf] <label>: rendered k/N <unit>` when a label is given."""
    if label:
        print(f"[imcf] {label}: rendered {done:,}/{total:,} {unit}", flush=True)


#: POSIX: workers start with SIGTERM blocked (the mask survives fork and exec) and ignore it before unblocking, so
#: a SIGTERM to the process group that arrives while a worker is still starting cannot kill it either
_CAN_MASK = hasattr(signal, "pthread_sigmask")


def _ignore_sigterm() -> None:
    """Pool worker initializer: SIGTERM is the parent's to handle (a SIGTERM sent to the whole process group, as
    `timeout` and job schedulers do, must not kill a worker in the middle of its chunk)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _CAN_MASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@functools.cache  # the running script does not change: read its source once per process
def unguarded_main_script() -> str | None:
    """The path of the script `python` runs when its source has no `__main__` guard, else None. A spawned worker
    re-runs such a script's top level (which starts the pool again), so it dies before its first chunk."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path or not str(path).endswith(".py"):
        return None  # interactive, `python -c`, a notebook, or a console-script launcher: nothing is re-run
    try:
        source = Path(path).read_text(errors="replace")
    except OSError:
        return None
    return None if "__main__" in source else str(path)


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
    process (e.g. a DataLoader worker), which may not have children, it runs serially. Workers ignore SIGTERM
    (the parent decides: imcf.training.preemption); a worker that dies all the same (SIGKILL, out of memory) raises
    a RuntimeError that says so, instead of waiting forever for its chunk. Called from a script without an
    `if __name__ == "__main__":` guard, whose top level each spawned worker would re-run, it runs serially and
    says why."""
    total, done, out = sum(sizes), 0, []
    every = max(1, -(-len(chunks) // 10))  # at most ten lines
    serial = workers <= 1 or multiprocessing.current_process().daemon
    unguarded = None if serial else unguarded_main_script()
    if unguarded:
        print(
            f'[imcf] {unguarded} has no `if __name__ == "__main__":` guard, so the {workers}-process rendering '
            "pool cannot spawn workers (each would re-run the script): rendering in this process instead",
            flush=True,
        )
    if serial or unguarded:
        results = map(fn, chunks)
        pool = None
    else:
        context = multiprocessing.get_context("spawn")
        if _CAN_MASK:  # started by the pool's first queue, the tracker would unblock SIGTERM before the spawns
            resource_tracker.ensure_running()
        # the workers are spawned inside map(): block SIGTERM meanwhile so they inherit the block (a group SIGTERM
        # while a worker was still importing killed it before its initializer ran: the pool broke, and the
        # survivor, which ignores SIGTERM, outlived the pool's terminate() and hung the parent at exit)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if _CAN_MASK else None
        try:
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigterm)
            results = pool.map(fn, chunks)  # in order, as they finish
        finally:
            if mask is not None:  # a SIGTERM that came meanwhile is delivered to the parent now
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    finished = False
    try:
        for i, r in enumerate(results):
            out.append(r)
            done += sizes[i]
            if (i + 1) % every == 0 or i + 1 == len(chunks):
                report(progress, done, total, unit)
        finished = True
    except BrokenProcessPool as e:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):  # survivors ignore terminate()
            proc.kill()
        what = f"{progress}: " if progress else ""
        raise RuntimeError(
            f"{what}a worker of the {workers}-process rendering pool died after {done:,}/{total:,} {unit} "
            "(killed, or out of memory?); nothing was cached: rerun the same command, or with fewer workers"
        ) from e
    finally:
        if pool is not None:  # on an error or a signal: drop the queued chunks, running ones end on their own
            pool.shutdown(wait=finished, cancel_futures=not finished)
    return out
