"""Modular training: unit planning, real short fits, resume, pretrained plug-ins, offline loggers."""

import struct
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from imcf.cli import train_and_evaluate
from imcf.config import ConfigError
from imcf.data.linear import DEFAULT_MECHANISMS
from imcf.graph import CausalGraph
from imcf.io import CheckpointError
from imcf.scm import SCM
from imcf.training import train
from imcf.training.modular import plan_units
from imcf.training.run import build_scm, load_pretrained, resumable_checkpoint

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "experiment=linear4",
                f"run_dir={tmp_path / 'run'}",
                f"data_root={tmp_path / 'data'}",
                f"evaluate.report_dir={tmp_path / 'report'}",
                "trainer.enable_progress_bar=false",
                "dataset.options.sizes={train: 2000, val: 200, test: 200}",
                *overrides,
            ],
        )


def test_plan_units_with_and_without_confounders():
    g = CausalGraph.from_dict(
        {
            "nodes": {
                "a": "continuous",
                "b": {"kind": "continuous", "parents": ["a"]},
                "c": {"kind": "continuous", "parents": ["b"]},
                "d": {"kind": "continuous", "parents": ["c"]},
            }
        }
    )
    assert [u.name for u in plan_units(g)] == ["a", "b", "c", "d"]
    gc = CausalGraph.from_dict({**g.to_dict(), "confounded": [["a", "c"]]})
    units = plan_units(gc)
    assert [(u.name, u.inputs) for u in units] == [("a+c", ("b",)), ("b", ("a",)), ("d", ("c",))]
    assert units[0].confounded
    assert [u.name for u in plan_units(gc, only=["d", "b"])] == ["b", "d"]
    with pytest.raises(ConfigError, match=r"units=\['zz'\] unknown"):
        plan_units(gc, only=["zz"])
    with pytest.raises(ValueError, match="all of \\['a', 'c'\\] pretrained or none"):
        plan_units(gc, pretrained=["a"])
    assert plan_units(gc, pretrained=["a", "c"])[0].pretrained


def test_training_recovers_the_true_linear_scm(tmp_path):
    result = train(_cfg(tmp_path, "dataset.batch_size=100", "evaluate_after=false"))
    scm = SCM.load(result["run_dir"])
    m = scm.mechanisms
    assert abs(m["x2"].weight.item() - 0.8) < 0.05
    assert abs(m["x3"].weight.item() + 1.2) < 0.05
    torch.testing.assert_close(m["x4"].weight.detach(), torch.tensor([0.6, 0.4]), atol=0.05, rtol=0)
    for node, spec in DEFAULT_MECHANISMS.items():
        assert abs(m[node].log_sigma.exp().item() - spec["sigma"]) < 0.05, node


def test_resume_equals_uninterrupted(tmp_path):
    full = train(_cfg(tmp_path / "a", "trainer.max_epochs=4", "evaluate_after=false", "units=[x4]"))
    train(_cfg(tmp_path / "b", "trainer.max_epochs=2", "evaluate_after=false", "units=[x4]"))
    resumed = train(_cfg(tmp_path / "b", "trainer.max_epochs=4", "evaluate_after=false", "units=[x4]"))
    a = torch.load(full["units"]["x4"], weights_only=True)["state_dict"]["x4"]
    b = torch.load(resumed["units"]["x4"], weights_only=True)["state_dict"]["x4"]
    # best-on-validation weights of the same 4 epochs
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pretrained_node_stays_bit_identical_and_is_skipped(tmp_path):
    first = train(_cfg(tmp_path / "first", "trainer.max_epochs=1", "evaluate_after=false"))
    ckpt = first["units"]["x2"]
    before = torch.load(ckpt, weights_only=True)["state_dict"]["x2"]
    second = train(
        _cfg(tmp_path / "second", "trainer.max_epochs=1", "evaluate_after=false", f"+mechanism.x2.pretrained={ckpt}")
    )
    after = torch.load(second["units"]["x2"], weights_only=True)["state_dict"]["x2"]
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_pretrained_mismatch_is_a_clear_error(tmp_path):
    first = train(_cfg(tmp_path / "first", "trainer.max_epochs=1", "evaluate_after=false", "units=[x2]"))
    with pytest.raises(CheckpointError, match="no weights for 'x4'"):
        train(_cfg(tmp_path / "second", "trainer.max_epochs=1", f"+mechanism.x4.pretrained={first['units']['x2']}"))


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline wandb run file (a LevelDB-style log: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, out, part = path.read_bytes(), 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if (length == 0 and kind == 0) or pos + 7 + length > len(data):  # the end, or a record being written
            break
        part, pos = part + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def test_loggers_one_wandb_run_per_unit_tensorboard_hparams_and_evaluator_logs(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = train_and_evaluate(_cfg(tmp_path, "trainer.max_epochs=1", "logger=all", "evaluate.num_samples=100"))
    report = Path(result["report"])
    assert (report / "metrics.json").is_file() and (report / "report.md").is_file()
    logs = Path(result["run_dir"]) / "logs"
    header = (logs / "x1" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "train/x1/nll_epoch" in header and "val/loss" in header
    # wandb: one finished run per unit and one for the evaluator, all in the training run's group
    runs = {}
    for path in (logs / "wandb").glob("offline-run-*/run-*.wandb"):
        deadline = time.monotonic() + 60  # wandb's service may still be writing the last run's file
        while not any(r.HasField("exit") for r in _wandb_records(path)) and time.monotonic() < deadline:
            time.sleep(0.5)
        records = _wandb_records(path)
        kinds = {r.WhichOneof("record_type"): r for r in records}
        summary = {u.key for r in records if r.HasField("summary") for u in r.summary.update}
        assert "exit" in kinds, path  # wandb.finish between units
        runs[kinds["run"].run.display_name] = (kinds["run"].run.run_group, summary)
    assert sorted(runs) == ["evaluate", "x1", "x2", "x3", "x4"]
    assert {group for group, _ in runs.values()} == {"run"}
    assert "hp/best_val_loss" in runs["x1"][1] and any(k.startswith("eval/truth/") for k in runs["evaluate"][1])
    # TensorBoard: hyper-parameters with the final metrics (HParams tab), for each unit and the evaluator
    for name in ("tb_x1", "tb_evaluate"):
        events = EventAccumulator(str(logs / name / "version_0"))
        events.Reload()
        assert "_hparams_/experiment" in events.PluginTagToContent("hparams"), name
    assert (logs / "evaluate" / "version_0" / "metrics.csv").read_text().startswith("eval/")


def test_unit_overrides_change_one_unit_only(tmp_path):
    result = train(
        _cfg(
            tmp_path,
            "trainer.max_epochs=1",
            "evaluate_after=false",
            "units=[x1,x2]",
            "+unit_overrides={x2: {trainer: {max_epochs: 3}}}",
        )
    )
    logs = Path(result["run_dir"]) / "logs"
    epochs = {u: (logs / u / "version_0" / "metrics.csv").read_text().count("\n") for u in ("x1", "x2")}
    assert epochs["x2"] > epochs["x1"]
    with pytest.raises(Exception, match="unit_overrides names unknown unit"):
        train(_cfg(tmp_path / "b", "evaluate_after=false", "+unit_overrides={zz: {trainer: {max_epochs: 3}}}"))
    with pytest.raises(Exception, match="unit_overrides.x1"):
        train(
            _cfg(
                tmp_path / "c", "evaluate_after=false", "units=[x1]", "+unit_overrides={x1: {trainer: {max_epoch: 3}}}"
            )
        )


def test_early_stopping_ends_a_plateaued_unit_and_a_rerun_does_not_train_it_again(tmp_path):
    # min_delta larger than any improvement after the first epoch: the unit stops once patience runs out
    # early stopping is off globally and on for x1 only: the per-unit setting is what stops it
    args = ["evaluate_after=false", "units=[x1]", "trainer.max_epochs=50", "early_stopping.min_delta=100.0",
            "+unit_overrides={x1: {early_stopping: {patience: 2}}}"]  # fmt: skip
    train(_cfg(tmp_path, *args))
    last = tmp_path / "run" / "checkpoints" / "x1" / "last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["epoch"] == 2  # epochs 0, 1, 2: no improvement of 100 nats after the first
    stamp = last.stat().st_mtime_ns
    train(_cfg(tmp_path, *args))  # the rerun restores the stopped unit without another epoch
    assert torch.load(last, weights_only=False)["global_step"] == first["global_step"]
    assert last.stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match="early_stopping.patience must be >= 1"):
        train(_cfg(tmp_path / "b", "evaluate_after=false", "units=[x1]", "early_stopping.patience=0"))
    with pytest.raises(Exception, match="unit_overrides.x1"):
        train(_cfg(tmp_path / "c", "evaluate_after=false", "+unit_overrides={x1: {early_stopping: {patients: 2}}}"))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_falls_back_from_a_damaged_last_checkpoint(tmp_path):
    train(_cfg(tmp_path, "trainer.max_epochs=2", "evaluate_after=false", "units=[x4]"))
    ckpts = tmp_path / "run" / "checkpoints" / "x4"
    _truncate(ckpts / "last.ckpt")
    with pytest.warns(UserWarning, match=r"cannot read checkpoint .*last\.ckpt .*resuming unit 'x4' from .*best\.ckpt"):
        result = train(_cfg(tmp_path, "trainer.max_epochs=3", "evaluate_after=false", "units=[x4]"))
    assert torch.load(result["units"]["x4"], weights_only=True)["state_dict"]["x4"]["weight"].shape == (2,)
    assert (ckpts / "last.ckpt.damaged").is_file()
    torch.load(ckpts / "last.ckpt", weights_only=True)  # written afresh
    for p in ckpts.glob("*.ckpt"):
        _truncate(p)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*x4.*resume=false"):
        train(_cfg(tmp_path, "trainer.max_epochs=4", "evaluate_after=false", "units=[x4]"))


def test_resumable_checkpoint_when_another_rank_moved_last_aside(tmp_path):
    """Two DDP ranks resume at once: the one that comes second finds last.ckpt already renamed `.damaged` and
    must still resume (from the same fallback), with the global step read from that file."""
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    torch.save({"global_step": 7, "state_dict": {}}, ckpts / "best.ckpt")
    (ckpts / "last.ckpt.damaged").write_bytes(b"half a checkpoint")
    with pytest.warns(UserWarning, match=r"last\.ckpt was damaged before; resuming unit 'u' from .*best\.ckpt"):
        assert resumable_checkpoint(ckpts, "u") == (ckpts / "best.ckpt", 7, None)
    torch.save({"global_step": 9}, ckpts / "last.ckpt")  # a fresh last.ckpt wins again, silently
    assert resumable_checkpoint(ckpts, "u") == (ckpts / "last.ckpt", 9, None)


def test_pretrained_from_another_graph_names_what_differs(tmp_path):
    cfg = _cfg(tmp_path)
    scm, _ = build_scm(cfg)
    other = CausalGraph.from_dict({"nodes": {"x2": "continuous", "x4": {"kind": "continuous", "parents": ["x2"]}}})
    path = SCM.build(other, {n: {"family": "linear_gaussian"} for n in other.nodes}).save(tmp_path / "o") / "x4.ckpt"
    with pytest.raises(
        CheckpointError, match=r"pretrained=.*x4\.ckpt: .*parents \['x2'\] in the checkpoint, \['x2', 'x3'\]"
    ):
        load_pretrained(scm, "x4", str(path))
    ckpt = torch.load(path, weights_only=True)
    del ckpt["meta"]  # an older checkpoint: only the weights' shapes tell
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"weight: shape \(1,\) in the checkpoint, \(2,\) here") as err:
        load_pretrained(scm, "x4", str(path))
    assert "size mismatch" not in str(err.value)


def test_wandb_ids_are_stable_per_unit_and_distinct_between_runs(tmp_path):
    from imcf.training.loggers import wandb_ids

    group, x1 = wandb_ids(tmp_path / "run", "x1")
    assert group == "run" and wandb_ids(tmp_path / "run", "x1") == (group, x1)  # a resumed unit continues its run
    assert len({x1, wandb_ids(tmp_path / "run", "x2")[1], wandb_ids(tmp_path / "other" / "run", "x1")[1]}) == 3
    assert len(wandb_ids(tmp_path / ("r" * 200), "a+b+" * 20)[1]) <= 64


def test_weight_averaging_gives_the_unit_its_averaged_weights_and_resumes_exactly(tmp_path):
    from imcf.training.run import ema_decay

    ema = ["evaluate_after=false", "units=[x4]", "+unit_overrides={x4: {optim: {ema_decay: 0.9}}}"]
    full = train(_cfg(tmp_path / "a", "trainer.max_epochs=3", *ema))
    ckpts = tmp_path / "a" / "run" / "checkpoints" / "x4"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    best = torch.load(ckpts / "best.ckpt", weights_only=True)
    raw, averaged = last["current_model_state"], last["state_dict"]
    assert not torch.equal(raw["mechanisms.x4.weight"], averaged["mechanisms.x4.weight"])  # averaging happened
    unit = torch.load(full["units"]["x4"], weights_only=True)["state_dict"]["x4"]
    for k, v in unit.items():  # the unit's result is the best epoch's averaged weights
        assert torch.equal(v, best["state_dict"][f"mechanisms.x4.{k}"]), k
    # interrupted after 1 epoch and resumed: the same raw and averaged weights as the uninterrupted run
    train(_cfg(tmp_path / "b", "trainer.max_epochs=1", *ema))
    train(_cfg(tmp_path / "b", "trainer.max_epochs=3", *ema))
    again = torch.load(tmp_path / "b" / "run" / "checkpoints" / "x4" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "current_model_state"):
        for k, v in last[key].items():
            assert torch.equal(v, again[key][k]), (key, k)
    # the decay: the unit's optim setting, else the largest its mechanisms ask for; 0 is off
    asks = [type("M", (), {"ema_decay": d})() for d in (None, 0.99, 0.9)]
    assert ema_decay({"ema_decay": None}, asks) == 0.99
    assert ema_decay({"ema_decay": 0.0}, asks) == 0.0
    assert ema_decay({"ema_decay": 0.5}, asks) == 0.5 and ema_decay({}, []) == 0.0
    with pytest.raises(Exception, match=r"optim.ema_decay must be in \[0, 1\)"):
        train(_cfg(tmp_path / "c", "evaluate_after=false", "units=[x1]", "optim.ema_decay=1.5"))


def test_learning_rate_warm_up_and_cosine_schedule(tmp_path):
    from imcf.training.module import lr_factor

    assert [lr_factor(k, warmup=4, total=100, cosine=False) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 0, 10, cosine=True) == 1.0 and lr_factor(10, 0, 10, cosine=True) == 0.0
    assert abs(lr_factor(5, 0, 10, cosine=True) - 0.5) < 1e-12 and abs(lr_factor(2, 4, 4, True) - 0.75 * 0.5) < 1e-12
    # through train.py: 2,000 rows in batches of 100 = 20 steps, all inside a 40-step warm-up
    train(_cfg(tmp_path, "evaluate_after=false", "units=[x1]", "trainer.max_epochs=1", "dataset.batch_size=100",
               "optim.warmup_steps=40"))  # fmt: skip
    state = torch.load(tmp_path / "run" / "checkpoints" / "x1" / "last.ckpt", weights_only=True)["lr_schedulers"][0]
    assert state["last_epoch"] == 20
    assert abs(state["_last_lr"][0] - state["base_lrs"][0] * 21 / 40) < 1e-12
    with pytest.raises(Exception, match="optim.scheduler must be 'cosine' or null"):
        train(_cfg(tmp_path / "b", "evaluate_after=false", "units=[x1]", "optim.scheduler=linear"))


def test_a_bad_unit_override_is_named_before_any_data_or_unit(tmp_path):
    """A unit's override was checked when its turn came: after the data were generated and the units before it
    trained (`unit_overrides.image.optim.scheduler=linear` failed only once the image unit started)."""
    bad = "+unit_overrides={x4: {optim: {scheduler: linear}}}"
    with pytest.raises(ConfigError, match="unit_overrides.x4.optim.scheduler must be 'cosine' or null"):
        train(_cfg(tmp_path, "evaluate_after=false", bad))
    assert not (tmp_path / "data").exists() and not (tmp_path / "run" / "checkpoints").exists()
