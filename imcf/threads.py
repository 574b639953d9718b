"""How many threads and processes a run uses: the CPUs it is given, split between torch's intra-op threads, data
loader workers and the data generation pool, never more than the cores in total.

Torch sizes its pool to every core of the machine, whatever the affinity mask or `--cpus-per-task` says; with a
second job on the same cores that ran the image unit 7x slower than one thread per core (issue 19)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from imcf.config import ConfigError


@dataclass(frozen=True)
class ThreadPlan:
    """What a process runs on `cpus` CPUs: intra-op threads and loader workers at once (training), generation
    processes on their own (before training, while the main process waits)."""

    cpus: int
    source: str  # where `cpus` comes from: affinity | SLURM_CPUS_PER_TASK | threads=<n>
    intra_op: int
    loader_workers: int
    generation: int
    interop: int = 1
    omp_num_threads: int | None = None  # set by the user: intra_op follows it

    def describe(self) -> str:
        """One line for the log: `threads: 2 CPUs (affinity) -> 2 intra-op, 0 loader workers, 2 generation ...`."""
        omp = f" (OMP_NUM_THREADS={self.omp_num_threads}, from the environment)" if self.omp_num_threads else ""
        return (
            f"threads: {_count(self.cpus, 'CPU')} ({self.source}) -> {self.intra_op} intra-op{omp}, "
            f"{_count(self.loader_workers, 'loader worker')}, {_count(self.generation, 'generation process')}"
        )


_applied: ThreadPlan | None = None  # the plan `apply` set last
_interop_set = False


def available_cpus(environ: Mapping[str, str] | None = None, affinity: set[int] | None = None) -> tuple[int, str]:
    """The CPUs this process may use and where that number comes from: the affinity mask, or SLURM_CPUS_PER_TASK
    when smaller (SLURM does not always bind the task to its CPUs)."""
    environ = os.environ if environ is None else environ
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except AttributeError:  # not Linux
            affinity = set(range(os.cpu_count() or 1))
    cpus, source = max(1, len(affinity)), "affinity"
    slurm = _positive_int(environ.get("SLURM_CPUS_PER_TASK"))
    if slurm is not None and slurm < cpus:
        cpus, source = slurm, "SLURM_CPUS_PER_TASK"
    return cpus, source


def plan_threads(
    cpus: int,
    source: str = "affinity",
    threads: int | None = None,
    omp_num_threads: str | None = None,
    loader_workers: int | None = None,
    key: str = "threads",
) -> ThreadPlan:
    """Split `cpus` (or an explicit `threads`) between intra-op threads, loader workers and generation processes.

    Loader workers only pay on many cores: the built-in datasets are in memory, and on a few cores a worker takes
    a core from the model. `omp_num_threads` (the user's OMP_NUM_THREADS) and `loader_workers` (dataset.num_workers)
    are respected as given; the other shares shrink so that the total stays within the CPUs."""
    check_threads(threads, key)
    if threads is not None:  # never more than the CPUs the process may use: more only oversubscribes them
        capped = int(threads) > cpus
        source = f"{key}={threads}, capped to the {cpus} CPUs it may use: {source}" if capped else f"{key}={threads}"
        cpus = min(int(threads), cpus)
    omp = _positive_int(omp_num_threads)
    if loader_workers is None:
        loader_workers = 0 if cpus <= 4 else min(4, cpus // 8)
    if omp is not None:
        intra = omp
        loader_workers = min(loader_workers, max(0, cpus - intra))
    else:
        intra = max(1, cpus - loader_workers)
    return ThreadPlan(
        cpus=cpus,
        source=source,
        intra_op=intra,
        loader_workers=int(loader_workers),
        generation=cpus,
        omp_num_threads=omp,
    )


def check_threads(threads: object, key: str = "threads") -> None:
    """Reject a `threads` setting that is not null (auto) or a positive number of CPUs, naming the key."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{key}={threads}: must be a positive number of CPUs, or null to use the CPUs given")


def plan_for(threads: int | None = None, loader_workers: int | None = None, key: str = "threads") -> ThreadPlan:
    """The plan for this process: its CPUs (affinity, SLURM), the `threads` setting and the user's OMP_NUM_THREADS."""
    check_threads(threads, key)
    cpus, source = available_cpus()
    return plan_threads(cpus, source, threads, os.environ.get("OMP_NUM_THREADS"), loader_workers, key)


def apply(plan: ThreadPlan, quiet: bool = False) -> None:
    """Set torch's intra-op threads (and its inter-op threads, once per process); print the plan's line when it
    changes. Data generation then takes `generation_processes()`, loaders take `plan.loader_workers`."""
    global _applied, _interop_set
    torch.set_num_threads(plan.intra_op)
    if not _interop_set:
        try:  # torch allows it once, before any inter-op parallel work
            torch.set_num_interop_threads(plan.interop)
        except RuntimeError:
            pass
        _interop_set = True
    if plan != _applied and not quiet:
        print(f"[imcf] {plan.describe()}", flush=True)
    _applied = plan


def generation_processes() -> int:
    """Processes for a data generation pool given no `workers`: the applied plan's, else the CPUs available."""
    return _applied.generation if _applied is not None else available_cpus()[0]


def _positive_int(value: str | None) -> int | None:
    try:
        n = int(str(value).strip())
    except ValueError:
        return None
    return n if n >= 1 else None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"
