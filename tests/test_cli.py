"""The entry points run end to end as subprocesses, as a user would run them."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from imcf.data.linear import DEFAULT_GRAPH
from imcf.graph import CausalGraph
from imcf.scm import SCM

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, *args, f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _gpu_smoke_args(run, tmp_path):
    return [
        "train.py",
        "experiment=linear4",
        "trainer=gpu",
        "trainer.fast_dev_run=true",
        "trainer.enable_progress_bar=false",
        f"run_dir={run}",
        f"data_root={tmp_path / 'data'}",
        "evaluate_after=false",
    ]


@pytest.mark.gpu
def test_train_on_gpu_fast_dev_run(tmp_path):
    """trainer=gpu (one GPU, 16-bit mixed precision) trains every unit of linear4; skipped without CUDA."""
    run = tmp_path / "run"
    out = _run(_gpu_smoke_args(run, tmp_path), tmp_path)
    assert "[imcf] run directory" in out
    for f in ("config.yaml", "mechanisms.yaml", "x1.ckpt", "x4.ckpt"):
        assert (run / f).is_file(), f


def test_train_fast_dev_run_then_evaluate(tmp_path):
    """The quickstart's job (default experiment: Morpho-MNIST, flows, Gumbel digit, VAE) on a small set."""
    run = tmp_path / "run"
    out = _run(
        [
            "train.py",
            "trainer.fast_dev_run=true",
            f"run_dir={run}",
            f"data_root={tmp_path / 'data'}",
            "dataset.options.num_samples=240",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path,
    )
    assert "[imcf] run directory" in out
    for f in ("config.yaml", "graph.yaml", "mechanisms.yaml", "graph.png", "thickness.ckpt", "image.ckpt"):
        assert (run / f).is_file(), f
    report = tmp_path / "report"
    out = _run(
        [
            "evaluate.py",
            f"run_dir={run}",
            f"report_dir={report}",
            "num_samples=24",
            "metrics/protocol=quick",
            "compute=[composition,reversibility,truth]",
            "cycles=[1,2]",
            "progress=false",
        ],
        tmp_path,
    )
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["meta"]["num_samples"] == 24
    keys = list(metrics["metrics"])
    assert any(k.startswith("composition/null x2/image") for k in keys), keys[:20]
    assert any(k.startswith("truth/do(thickness)/image") for k in keys), keys[:20]
    assert metrics["meta"]["identifiability"]["do(thickness)"]["status"] == "rests_on_mechanism"
    assert (report / "report.md").read_text().startswith("# Evaluation")


def test_celeba_release_trains_and_evaluates_end_to_end(tmp_path):
    """A few dozen JPEGs in the CelebA release layout: train.py on the simple graph, then evaluate.py."""
    from tests.data.test_celeba import release_rows, write_celeba

    write_celeba(tmp_path / "data", release_rows(36))
    run = tmp_path / "run"
    common = [f"data_root={tmp_path / 'data'}"]
    out = _run(
        [
            "train.py",
            "dataset=celeba",
            "graph=celeba_simple",
            "trainer.fast_dev_run=true",
            "trainer.enable_progress_bar=false",
            f"run_dir={run}",
            *common,
        ],
        tmp_path,
    )
    assert "[imcf] run directory" in out
    for f in ("Smiling.ckpt", "Eyeglasses.ckpt", "image.ckpt"):
        assert (run / f).is_file(), f
    report = tmp_path / "report"
    _run(
        ["evaluate.py", f"run_dir={run}", f"report_dir={report}", "num_samples=6", "progress=false", *common],
        tmp_path,
    )
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    for key in (
        "effectiveness/do(Smiling)/Smiling:f1",
        "effectiveness/do(Eyeglasses)/Eyeglasses:f1",
        "composition/null x10/image:l1",
        "realism/do(Smiling)/image:fid",
    ):
        assert key in metrics, (key, list(metrics)[:20])
    assert not any(k.startswith("truth/") for k in metrics)  # real photos have no true counterfactual
    # the CelebA-scale experiment (complex graph, larger HVAE; written for trainer=gpu) runs on the same files
    run = tmp_path / "run_complex"
    _run(["train.py", "experiment=celeba", "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false",
          f"run_dir={run}", *common], tmp_path)  # fmt: skip
    assert yaml.safe_load((run / "graph.yaml").read_text())["name"] == "celeba_complex"
    assert (run / "Beard.ckpt").is_file() and (run / "image.ckpt").is_file()


def test_faces_render_over_a_process_pool_inside_train_py(tmp_path):
    """Faces generated by train.py's data module over two spawned processes (fork deadlocked there), then a
    faces_simple model trained on them."""
    run = tmp_path / "run"
    out = _run(
        [
            "train.py",
            "dataset=faces",
            "graph=faces_simple",
            "dataset.options.sizes={train: 520, val: 16, test: 16}",
            "dataset.options.workers=2",
            "trainer.fast_dev_run=true",
            "trainer.enable_progress_bar=false",
            f"run_dir={run}",
            f"data_root={tmp_path / 'data'}",
        ],
        tmp_path,
    )
    assert "[imcf] faces train: rendered 520/520 faces" in out
    assert (run / "image.ckpt").is_file()


def test_bad_override_names_the_key(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "train.py", "trainer.max_epochs=many", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "trainer.max_epochs" in proc.stderr + proc.stdout


def test_ddp_two_cpu_processes_agree_and_rank_zero_evaluates_once(tmp_path):
    run = tmp_path / "run"
    out = _run(
        [
            "train.py",
            "experiment=linear4",
            "trainer=ddp_cpu",
            "trainer.max_epochs=1",
            f"run_dir={run}",
            f"data_root={tmp_path / 'data'}",
            f"evaluate.report_dir={tmp_path / 'report'}",
            "evaluate.num_samples=64",
            "trainer.enable_progress_bar=false",
            "dataset.options.sizes={train: 256, val: 64, test: 64}",
        ],
        tmp_path,
    )
    assert "2 ranks agree on the weights of ['x4']" in out
    assert "effective batch size 2 x 256 = 512" in out
    # every rank waits for the unit checkpoints; only rank 0 evaluates and reports
    assert "skipping evaluation" not in out and out.count("[imcf] run directory") == 1, out[-3000:]
    assert (run / "x4.ckpt").is_file() and (tmp_path / "report" / "metrics.json").is_file()
    assert not list(run.rglob("*.lock"))


def test_evaluate_bad_run_dirs_end_in_one_clear_line(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    g = CausalGraph.from_dict(DEFAULT_GRAPH)
    run = SCM.build(g, {n: {"family": "linear_gaussian"} for n in g.nodes}).save(tmp_path / "run")
    (run / "x3.ckpt").write_bytes((run / "x3.ckpt").read_bytes()[:100])
    for run_dir, message in [("/nonexistent", "run directory /nonexistent does not exist"), (run, r"x3.ckpt")]:
        proc = subprocess.run(
            [sys.executable, "evaluate.py", f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'hydra'}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1
        assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "cannot read checkpoint" in proc.stderr and "units=[x3]" in proc.stderr


def test_unwritable_run_dir_data_root_or_report_dir_ends_in_one_line_naming_the_setting(tmp_path):
    """A run_dir that cannot be created ended in a FileNotFoundError traceback; a data root the data cannot be
    written to printed its message under a traceback; a report_dir failed after the whole evaluation. All are
    caught before data generation, training or counterfactuals."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    blocked = tmp_path / "a_file"  # nothing can be created under a file, whoever runs the tests
    blocked.write_text("")
    cases = [
        (
            [f"run_dir={blocked / 'run'}", f"data_root={tmp_path / 'data'}"],
            "cannot write the run's checkpoints",
            "run_dir=",
        ),
        (
            [f"run_dir={tmp_path / 'run'}", f"data_root={blocked / 'data'}"],
            "cannot write the Morpho-MNIST cache",
            "data_root=",
        ),
        (
            [f"run_dir={tmp_path / 'run2'}", f"data_root={tmp_path / 'data'}", f"evaluate.report_dir={blocked / 'r'}"],
            "cannot write the evaluation report",
            "evaluate.report_dir=",
        ),
    ]
    for overrides, message, setting in cases:
        proc = subprocess.run(
            [sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last and str(blocked) in last and setting in last, last
        assert "rendered" not in proc.stdout + proc.stderr  # nothing generated
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.npz"))
    run = tmp_path / "run"  # the evaluation's report: refused before any counterfactual is drawn
    g = CausalGraph.from_dict(DEFAULT_GRAPH)
    SCM.build(g, {n: {"family": "linear_gaussian"} for n in g.nodes}).save(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"dataset": {"name": "linear_gaussian", "root": str(tmp_path)}}))
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"run_dir={run}", f"report_dir={blocked / 'report'}", "num_samples=64"]
        + [f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert last.startswith("error: cannot write the evaluation report under") and "report_dir=" in last, last
    assert "evaluating" not in proc.stderr + proc.stdout


def test_user_errors_end_in_one_line_but_let_preemption_exit_143(capsys):
    from imcf.cli import user_errors
    from imcf.config import ConfigError
    from imcf.training.preemption import Preempted

    with pytest.raises(SystemExit) as stop, user_errors():
        raise ConfigError("runs/x holds a run of another configuration")
    assert stop.value.code == 1 and capsys.readouterr().err == "error: runs/x holds a run of another configuration\n"
    from imcf.training.run import build_scm
    from tests.training.test_train import _cfg

    with (
        pytest.raises(SystemExit) as stop,
        user_errors(),
    ):  # a missing input file: one line, and still a FileNotFoundError
        build_scm(_cfg(Path("/tmp/imcf-test-none"), "init_from=/nonexistent/run"))
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.startswith("error: init_from=/nonexistent/run: no checkpoint of unit"), err
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as stop, user_errors():  # a family refusing an option: one line naming it
        build_scm(_cfg(Path("/tmp/imcf-test-none"), "+mechanism.x2.config.nosuch=1"))
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.startswith("error: mechanism.x2.config (linear_gaussian): "), err
    assert "nosuch" in err and err.count("\n") == 1
    with pytest.raises(Preempted) as stop, user_errors():  # a SystemExit, not a user error: requeue needs 143
        raise Preempted("unit 'x4' stopped by SIGTERM")
    assert stop.value.code == 143 and capsys.readouterr().err == ""


def test_evaluate_help_lists_only_what_evaluate_reads(tmp_path):
    out = _run(["evaluate.py", "--help"], tmp_path)
    groups = out.split("== Configuration groups ==")[1].split("== Config ==")[0].strip().splitlines()
    protocols = sorted(p.stem for p in (ROOT / "configs/metrics/protocol").glob("*.yaml"))
    assert groups == [f"metrics/protocol: {', '.join(protocols)}"]  # no training groups (dataset, trainer, ...)
    assert "run_dir: ???" in out


def test_a_config_hydra_cannot_compose_ends_in_one_line(tmp_path):
    """A graph file with a duplicate node (Hydra printed a 40-line YAML traceback), a
    file YAML cannot parse, an unknown config group option: one `error:` line naming the file and line or the
    options; with HYDRA_FULL_ERROR set, Hydra's own traceback, as its users expect."""
    graphs = tmp_path / "cfg" / "graph"
    graphs.mkdir(parents=True)
    (graphs / "dup.yaml").write_text(
        "name: dup\nnodes:\n  a: {kind: continuous, parents: []}\n  b: {kind: continuous, parents: [a]}\n"
        "  a: {kind: continuous, parents: []}\nconfounded: []\n"
    )
    (graphs / "broken.yaml").write_text("name: broken\nnodes:\n  a: {kind: continuous\n  b: [\n")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    cases = [
        (["train.py", f"--config-dir={tmp_path / 'cfg'}", "graph=dup"], r"dup.yaml, line 5: found duplicate key a"),
        (["train.py", f"--config-dir={tmp_path / 'cfg'}", "graph=broken"], r"broken.yaml, line 4: expected ','"),
        (["train.py", "graph=nosuch"], r"Could not find 'graph/nosuch'; Available options in 'graph': .*morphomnist,"),
        (["evaluate.py", "run_dir=x", "metrics/protocol=nosuch"], r"Could not find 'metrics/protocol/nosuch'"),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, *args, f"hydra.run.dir={tmp_path / 'hydra'}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
        assert re.search(message, lines[0]), lines[0]
    proc = subprocess.run(
        [sys.executable, "train.py", f"--config-dir={tmp_path / 'cfg'}", "graph=dup"],
        cwd=ROOT, env={**env, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "found duplicate key a" in proc.stderr


def test_run_entry_reports_composition_errors_but_keeps_the_jobs_own_tracebacks(monkeypatch, capsys):
    """Only what Hydra raises before the job runs becomes one line; an OmegaConf error raised inside the job body
    (a bug) keeps its traceback."""
    import functools

    from hydra.errors import HydraException
    from omegaconf.errors import ConfigKeyError

    from imcf.config import run_entry

    monkeypatch.delenv("HYDRA_FULL_ERROR")

    def body() -> None:
        raise ConfigKeyError("missing key inside the job")

    @functools.wraps(body)
    def job() -> None:  # what @hydra.main makes of `body`
        body()

    with pytest.raises(ConfigKeyError, match="inside the job"):
        run_entry(job)

    def composing() -> None:
        raise HydraException("Could not find 'graph/x'\nAvailable options in 'graph':\n\ta\n\tb\nConfig search path:\n")

    with pytest.raises(SystemExit) as exit_:
        run_entry(composing)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: Could not find 'graph/x'; Available options in 'graph': a, b\n"
    assert "HYDRA_FULL_ERROR" not in os.environ  # set only while the entry point runs
