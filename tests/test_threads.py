"""The thread plan: CPUs from the affinity mask, SLURM or `threads=`, split without oversubscribing."""

import pytest
import torch

from imcf import threads
from imcf.config import ConfigError, EvaluateConfig, TrainConfig, validate
from imcf.threads import ThreadPlan, available_cpus, plan_threads


def total(plan: ThreadPlan) -> int:
    """Threads running at once while training: intra-op threads and loader workers."""
    return plan.intra_op + plan.loader_workers


@pytest.mark.parametrize("n", [1, 2, 16])
def test_plan_for_affinity_sets_never_oversubscribes(n):
    cpus, source = available_cpus(environ={}, affinity=set(range(n)))
    assert (cpus, source) == (n, "affinity")
    plan = plan_threads(cpus, source)
    assert total(plan) == n and plan.generation == n and plan.interop == 1
    assert plan.intra_op >= 1


def test_few_cores_use_no_loader_workers_many_cores_some():
    assert plan_threads(1).loader_workers == plan_threads(2).loader_workers == 0
    plan = plan_threads(16)
    assert (plan.intra_op, plan.loader_workers) == (14, 2)
    assert plan.describe() == "threads: 16 CPUs (affinity) -> 14 intra-op, 2 loader workers, 16 generation processes"


def test_slurm_cpus_per_task_smaller_than_affinity_wins():
    cpus, source = available_cpus(environ={"SLURM_CPUS_PER_TASK": "4"}, affinity=set(range(64)))
    assert (cpus, source) == (4, "SLURM_CPUS_PER_TASK")
    plan = plan_threads(cpus, source)
    assert total(plan) == 4 and plan.generation == 4
    assert "4 CPUs (SLURM_CPUS_PER_TASK)" in plan.describe()
    # larger than the mask (or not a number): the mask it is
    assert available_cpus(environ={"SLURM_CPUS_PER_TASK": "8"}, affinity={0, 1}) == (2, "affinity")
    assert available_cpus(environ={"SLURM_CPUS_PER_TASK": "x"}, affinity={0, 1}) == (2, "affinity")


def test_explicit_threads_setting_overrides_the_cpus_found():
    plan = plan_threads(16, "affinity", threads=3)
    assert (plan.cpus, plan.intra_op, plan.loader_workers, plan.generation) == (3, 3, 0, 3)
    assert "3 CPUs (threads=3)" in plan.describe()
    # more than the process may use only oversubscribes its CPUs (threads=64 planned 64 generation processes)
    plan = plan_threads(2, "affinity", threads=64)
    assert (plan.cpus, plan.intra_op, plan.generation) == (2, 2, 2)
    assert "2 CPUs (threads=64, capped to the 2 CPUs it may use: affinity)" in plan.describe()


def test_users_omp_num_threads_is_respected_and_reported():
    plan = plan_threads(2, "affinity", omp_num_threads="1")
    assert (plan.intra_op, plan.loader_workers, plan.omp_num_threads) == (1, 0, 1)
    assert "1 intra-op (OMP_NUM_THREADS=1, from the environment)" in plan.describe()
    # on many cores the loader workers take what the user's threads leave
    plan = plan_threads(16, "affinity", omp_num_threads="15")
    assert (plan.intra_op, plan.loader_workers) == (15, 1)
    assert plan_threads(2, omp_num_threads="").omp_num_threads is None  # empty: not set


def test_explicit_loader_workers_are_kept_and_intra_op_shrinks():
    plan = plan_threads(8, loader_workers=3)
    assert (plan.intra_op, plan.loader_workers) == (5, 3)


@pytest.mark.parametrize("bad", [0, -1])
def test_threads_must_be_positive_and_the_key_is_named(bad):
    with pytest.raises(ConfigError, match=f"threads={bad}"):
        plan_threads(2, threads=bad)
    with pytest.raises(ConfigError, match=f"evaluate.threads={bad}"):
        threads.plan_for(bad, key="evaluate.threads")


@pytest.mark.parametrize("schema", [TrainConfig, EvaluateConfig])
def test_config_key_threads_defaults_to_auto_and_rejects_non_numbers(schema):
    base = {"run_dir": "r", "dataset": {"name": "d"}} if schema is TrainConfig else {"run_dir": "r"}
    assert validate(base, schema).threads is None
    assert validate({**base, "threads": 3}, schema).threads == 3
    with pytest.raises(ConfigError, match="threads"):
        validate({**base, "threads": "many"}, schema)


def test_train_rejects_threads_zero_naming_the_key():
    from imcf.training import train

    with pytest.raises(ConfigError, match="threads=0"):
        train({"run_dir": "unused", "dataset": {"name": "linear_gaussian"}, "threads": 0})


def test_apply_sets_torchs_thread_count_and_the_generation_pool(capsys, monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_applied", None)
    plan = plan_threads(3, "affinity")
    try:
        threads.apply(plan)
        assert torch.get_num_threads() == 3
        assert threads.generation_processes() == 3
        assert capsys.readouterr().out.strip() == f"[imcf] {plan.describe()}"
        threads.apply(plan)  # the same plan again (evaluate after train): no second line
        assert capsys.readouterr().out == ""
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
