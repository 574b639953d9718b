"""`train(cfg)`: train every unit of the SCM (or the named ones) and write the run directory."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from imcf.config import UNIT_RULES, ConfigError, TrainConfig, check_values, report_dir_of, validate
from imcf.data.datamodule import CausalDataModule
from imcf.graph import CausalGraph
from imcf.io import (
    CheckpointError,
    MissingFileError,
    atomic_torch_save,
    atomic_write_yaml,
    ensure_writable,
    read_yaml,
    safe_torch_load,
)
from imcf.mechanisms.base import Mechanism
from imcf.scm import SCM, unit_name
from imcf.threads import ThreadPlan, apply, plan_for
from imcf.training.finetune import finetune_nodes, finetune_objectives
from imcf.training.loggers import build_loggers, finish_loggers, wandb_ids
from imcf.training.modular import Unit, plan_units
from imcf.training.module import UnitModule
from imcf.training.preemption import Preempted, SignalGuard, requeue, sigterm_guard
from imcf.training.rundir import check_stored_config, has_started, unit_lock
from imcf.training.specs import mechanism_specs


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writes (last.ckpt, best.ckpt) through `imcf.io.atomic_torch_save`: a temporary file
    beside the target, fsynced, renamed; the user's umask."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)


class UnitProgressBar(TQDMProgressBar):
    """Lightning's progress bar, naming the unit it trains ("x2 epoch 3")."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"{self.unit} epoch {trainer.current_epoch}")


@rank_zero_only
def say(message: str) -> None:
    """A progress line, printed once (by rank 0 under DDP)."""
    print(message, flush=True)


def build_scm(cfg: DictConfig) -> tuple[SCM, dict[str, Any]]:
    """Graph and fresh mechanisms from the config; `pretrained` mechanisms loaded and frozen, `init` ones
    loaded and left trainable."""
    graph = CausalGraph.from_dict(OmegaConf.to_container(cfg.graph, resolve=True))
    implied = cfg.dataset.get("node_config")
    implied = OmegaConf.to_container(implied, resolve=True) if implied else {}
    specs = mechanism_specs(graph, cfg.mechanism, cfg.dataset.get("image_gain") or (), implied)
    build_specs: dict[str, Any] = {n: {"family": s.family, "config": s.config} for n, s in specs.items()}
    build_specs["_components"] = {"*": OmegaConf.to_container(cfg.mechanism.get("confounder") or {}, resolve=True)}
    try:
        scm = SCM.build(graph, build_specs)
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # a family refusing its options: the user's config, one line
        raise ConfigError(str(e.args[0]) if e.args else repr(e)) from None
    if cfg.get("init_from"):
        specs_from_run(specs, graph, cfg.init_from, cfg.units)
    for node, spec in specs.items():
        if spec.pretrained and spec.init:
            raise ConfigError(f"mechanism.{node}: set pretrained (frozen) or init (trained on), not both")
        if spec.pretrained:
            load_pretrained(scm, node, spec.pretrained)
        elif spec.init:
            load_pretrained(scm, node, spec.init, freeze=False)
    return scm, specs


def specs_from_run(specs: dict[str, Any], graph: CausalGraph, run_dir: str, units: list[str] | None) -> None:
    """`init_from=<run>`: every unit of `units` (all when None) starts from that run's `<unit>.ckpt` and
    trains on (`init`); every other unit is loaded frozen from it (`pretrained`). Nodes that already name
    their own `pretrained` / `init` keep them."""
    known = [unit_name(c) for c in graph.c_components()]
    bad = [u for u in units or [] if u not in known]
    if bad:
        raise ConfigError(f"units={list(units or [])}: {bad} are not units of this graph; units: {known}")
    for comp in graph.c_components():
        name = unit_name(comp)
        path = Path(run_dir) / f"{name}.ckpt"
        if all(specs[n].pretrained or specs[n].init for n in comp):
            continue
        if not path.is_file():
            raise MissingFileError(f"init_from={run_dir}: no checkpoint of unit {name!r} ({path})")
        for n in comp:
            if specs[n].pretrained or specs[n].init:
                continue
            if units is None or name in units:
                specs[n].init = str(path)
            else:
                specs[n].pretrained = str(path)


def load_pretrained(scm: SCM, node: str, path: str, freeze: bool = True) -> None:
    """Load `node`'s weights from a unit checkpoint of another run; freeze them unless `freeze=False`."""
    key = f"mechanism.{node}.{'pretrained' if freeze else 'init'}={path}"
    if not Path(path).is_file():
        raise MissingFileError(f"{key}: no such file")
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or node not in ckpt["state_dict"]:
        held = list(ckpt.get("state_dict", {})) if isinstance(ckpt, dict) else []
        raise CheckpointError(f"{key}: no weights for {node!r} (checkpoint holds {held}): give {node}'s own unit file")
    mech = scm.mechanisms[node]
    # the constructor arguments may differ (initial values, fine-tuning options); what the weights mean may not
    problems = scm.checkpoint_differences(node, ckpt, fields=("parents", "kind", "family"))
    if problems:
        raise CheckpointError(f"{key}: the checkpoint does not fit this graph: {'; '.join(problems)}")
    mech.load_state_dict(ckpt["state_dict"][node])
    comp = next((c for c in scm.components.values() if node in c.nodes), None)
    if comp is not None and "component" in ckpt:  # the shared-noise model of a confounded unit
        comp.load_state_dict(ckpt["component"])
        if freeze:
            comp.requires_grad_(False)
    if freeze:
        mech.requires_grad_(False)
        mech.eval()


def _write_run_files(run_dir: Path, cfg: DictConfig, scm: SCM) -> None:
    """Write config.yaml, graph.yaml, mechanisms.yaml; refuse to mix two configurations in one run dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    check_stored_config(run_dir, config)
    files = {
        "graph.yaml": scm.graph.to_dict(),
        "mechanisms.yaml": scm.mechanism_specs(),
    }
    for fname, content in files.items():
        path = run_dir / fname
        if path.is_file() and read_yaml(path) != content and has_started(run_dir):
            raise ValueError(
                f"{path} describes a different model than this config; use a new run_dir "
                f"(run_dir=runs/<new name>) or delete the old run"
            )
        atomic_write_yaml(path, content)
    atomic_write_yaml(run_dir / "config.yaml", config)
    scm.graph.draw(run_dir / "graph.png")


UNIT_SETTINGS = ("trainer", "optim", "early_stopping")


def unit_settings(cfg: DictConfig, unit: Unit) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Trainer, optimiser and early-stopping settings of one unit: the global ones with `unit_overrides.<unit>`
    on top."""
    over = dict(cfg.unit_overrides.get(unit.name) or {})
    unknown = set(over) - set(UNIT_SETTINGS)
    if unknown:
        raise ConfigError(
            f"unit_overrides.{unit.name}: unknown key(s) {sorted(unknown)}; use {' / '.join(UNIT_SETTINGS)}"
        )
    try:  # cfg.trainer / cfg.optim / cfg.early_stopping are typed: a wrong key or type fails here
        merged = [OmegaConf.merge(cfg[k], over.get(k) or {}) for k in UNIT_SETTINGS]
    except OmegaConfBaseException as e:
        raise ConfigError(f"unit_overrides.{unit.name}: {e}") from None
    trainer, optim, stopping = (OmegaConf.to_container(m, resolve=True) for m in merged)
    check_values(dict(zip(UNIT_SETTINGS, (trainer, optim, stopping))), UNIT_RULES, f"unit_overrides.{unit.name}.")
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    # Lightning's own availability test; its "gpu" is CUDA or, on Apple silicon, MPS
    usable = CUDAAccelerator.is_available() or (accelerator == "gpu" and MPSAccelerator.is_available())
    if accelerator in ("gpu", "cuda") and not usable:
        key = f"unit_overrides.{unit.name}.trainer" if "accelerator" in (over.get("trainer") or {}) else "trainer"
        raise ConfigError(
            f"{key}.accelerator={accelerator} but torch sees no GPU (Lightning finds no usable {accelerator} "
            "device); use trainer=cpu (or trainer.accelerator=auto) on this machine"
        )
    return trainer, optim, stopping


def train_unit(
    cfg: DictConfig,
    scm: SCM,
    unit: Unit,
    datamodule: CausalDataModule,
    run_dir: Path,
    guard: SignalGuard,
    objectives: Mapping[str, nn.Module] | None = None,
) -> Path:
    """Fit one unit with Lightning (resuming from its last checkpoint) and write `<unit>.ckpt`. `objectives`:
    per node, an objective replacing its mechanism's loss (counterfactual fine-tuning)."""
    trainer_cfg, optim_cfg, stopping = unit_settings(cfg, unit)
    component = scm.components[unit.name] if unit.name in scm.components else None
    own = {n: o for n, o in (objectives or {}).items() if n in unit.nodes}
    module = UnitModule({n: scm.mechanisms[n] for n in unit.nodes}, optim_cfg, component, own)
    ckpt_dir = run_dir / "checkpoints" / unit.name
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1)
    # every epoch, improved or not: a pre-empted unit resumes from its last completed epoch
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, save_on_train_epoch_end=True)
    last_path = ckpt_dir / "last.ckpt"
    resume = None
    resume_step = None
    # a damaged last.ckpt (renamed .damaged, maybe by another DDP rank a moment ago) gives way to the newest
    # readable checkpoint beside it
    started = last_path.is_file() or last_path.with_name("last.ckpt.damaged").is_file()
    if cfg.resume and started and not trainer_cfg["fast_dev_run"]:
        found, resume_step, stopped = resumable_checkpoint(ckpt_dir, unit.name)
        resume = str(found)
        if stopped is not None:  # an early-stopped unit is complete: restore it without training another epoch
            trainer_cfg["max_epochs"] = min(trainer_cfg["max_epochs"], stopped + 1)
    hparams = OmegaConf.to_container(cfg, resolve=True)
    # under SLURM, pre-emption is ours (imcf.training.preemption), not Lightning's auto-requeue on SIGUSR1
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    group, run_id = wandb_ids(run_dir, unit.name)
    loggers = build_loggers(cfg.logger, run_dir / "logs", unit.name, hparams, resume_step, group, run_id)
    progress = [UnitProgressBar(unit.name)] if trainer_cfg["enable_progress_bar"] else []
    decay = ema_decay(optim_cfg, module.mechanisms.values())
    averaging = [EMAWeightAveraging(decay=decay)] if decay else []
    trainer = L.Trainer(
        **trainer_cfg,
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=[best, last, *early_stopping(stopping), *averaging, *progress],
        plugins=plugins,
    )
    if trainer.world_size > 1:
        say(
            f"[imcf] unit {unit.name!r}: DDP over {trainer.world_size} processes, effective batch size "
            f"{trainer.world_size} x {cfg.dataset.batch_size} = {trainer.world_size * cfg.dataset.batch_size}"
        )
    if resume:
        say(f"[imcf] resuming unit {unit.name!r} from {resume}")
    try:
        with guard.fit():
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    except SIGTERMException:
        try:  # still exit 143 (requeue) when last.ckpt cannot be read: the next start falls back past it
            epoch = safe_torch_load(last_path)["epoch"] if last_path.is_file() else None
            saved = f"epoch {epoch} saved in {last_path}" if epoch is not None else "no epoch completed yet"
        except CheckpointError:
            saved = f"{last_path} is unreadable: the next start resumes from the newest readable checkpoint"
        raise Preempted(f"unit {unit.name!r} stopped by SIGTERM ({saved}); rerun the same command to resume") from None
    finally:
        if trainer.is_global_zero:
            final = {
                "hp/best_val_loss": best.best_model_score,
                "hp/last_val_loss": trainer.callback_metrics.get("val/loss"),
                "hp/epochs": trainer.current_epoch,
            }
            finish_loggers(loggers, hparams, final)
    if best.best_model_path and Path(best.best_model_path).is_file() and not trainer_cfg["fast_dev_run"]:
        state = safe_torch_load(best.best_model_path)["state_dict"]
        module.load_state_dict(state)
    path = scm.save_unit(run_dir, unit.nodes) if trainer.is_global_zero else run_dir / f"{unit.name}.ckpt"
    trainer.strategy.barrier(f"imcf-{unit.name}-saved")  # DDP: no rank goes on before the checkpoint exists
    return path


def early_stopping(settings: Mapping[str, Any]) -> list[EarlyStopping]:
    """The unit's early-stopping callback on `val/loss` (none when `patience` is null); Lightning checkpoints its
    state, so a resumed unit keeps counting where it stopped."""
    if settings.get("patience") is None:
        return []
    if int(settings["patience"]) < 1:
        raise ConfigError(f"early_stopping.patience must be >= 1 (or null: off), got {settings['patience']}")
    return [EarlyStopping(monitor="val/loss", mode="min", patience=int(settings["patience"]),
                          min_delta=float(settings["min_delta"]))]  # fmt: skip


def ema_decay(optim: Mapping[str, Any], mechanisms: Iterable[Mechanism]) -> float:
    """The decay of the unit's exponential moving average of the weights: `optim.ema_decay`, or, when that is None,
    the largest `ema_decay` its mechanisms ask for; 0 means no averaging. With averaging, validation, checkpoints and
    the unit's result use the averaged weights (Lightning's EMAWeightAveraging); the raw weights travel in the
    training checkpoints for resuming."""
    decay = optim.get("ema_decay")
    if decay is None:
        decay = max((float(m.ema_decay) for m in mechanisms if m.ema_decay), default=0.0)
    if not 0.0 <= float(decay) < 1.0:
        raise ConfigError(f"optim.ema_decay must be in [0, 1) (0 or null: off), got {decay}")
    return float(decay)


def stopped_epoch(ckpt: Mapping[str, Any]) -> int | None:
    """The epoch at which early stopping ended the unit of this training checkpoint (None: it did not)."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("EarlyStopping") and int(state.get("stopped_epoch", 0)) > 0:
            return int(state["stopped_epoch"])
    return None


class Resumable(NamedTuple):
    """The checkpoint a unit resumes from, its global step and the epoch early stopping ended it at (or None)."""

    path: Path
    step: int
    stopped_epoch: int | None


def resumable_checkpoint(ckpt_dir: Path, unit: str) -> Resumable:
    """`ckpt_dir/last.ckpt` (with its global step and early-stopped epoch), or, when it cannot be read (a crash
    mid-write, a full disk), the newest readable checkpoint beside it, with a warning; damaged files are renamed
    `<name>.damaged` so Lightning never reads them. Safe when several DDP ranks call it at once (a file another
    rank moved aside is skipped). Each candidate is read once."""
    last = ckpt_dir / "last.ckpt"

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:  # moved aside by another rank since the listing
            return float("-inf")

    others = sorted((p for p in ckpt_dir.glob("*.ckpt") if p != last), key=mtime, reverse=True)
    damaged: list[str] = []
    for path in [last, *others]:
        try:
            ckpt = safe_torch_load(path)
        except FileNotFoundError:
            continue
        except CheckpointError as e:
            damaged.append(str(e))
            try:
                path.rename(path.with_name(path.name + ".damaged"))
            except FileNotFoundError:  # another rank renamed it first
                pass
            continue
        if damaged or path != last:
            warnings.warn(
                f"{damaged[0] if damaged else f'{last} was damaged before'}; resuming unit {unit!r} from {path} "
                f"instead (the damaged file is kept as {last.name}.damaged)",
                stacklevel=2,
            )
        return Resumable(path, int(ckpt.get("global_step", 0)), stopped_epoch(ckpt))
    raise CheckpointError(
        f"{'; '.join(damaged) or f'{last} is damaged'}; no readable checkpoint in {ckpt_dir} to resume unit "
        f"{unit!r} from: train it from scratch with resume=false (or delete {ckpt_dir})"
    )


def train(cfg: Any) -> dict[str, Any]:
    """Train the SCM described by `cfg` (see configs/train.yaml); returns paths of what was written, and under
    "evaluate" the evaluation config when `evaluate_after` asks for an evaluation that is due (all units trained,
    rank 0): `imcf.cli.train_and_evaluate` (train.py) runs it.

    SIGTERM raises `Preempted` (exit code 143) once the unit's last completed epoch is saved; under SLURM with
    `requeue: true` the job is requeued first."""
    cfg = validate(cfg, TrainConfig)
    plan = plan_for(cfg.threads, cfg.dataset.num_workers)
    apply(plan)  # first: torch takes its inter-op thread count only before any parallel work
    with sigterm_guard() as guard:
        try:
            return _train(cfg, guard, plan)
        except Preempted as stop:
            done = requeue() if cfg.requeue else ""
            print(f"[imcf] {stop}" + (f"; {done}" if done else ""), flush=True)
            raise


def _train(cfg: DictConfig, guard: SignalGuard, plan: ThreadPlan) -> dict[str, Any]:
    L.seed_everything(cfg.seed, workers=True)
    scm, specs = build_scm(cfg)
    run_dir = Path(cfg.run_dir)
    if not cfg.prepare_only:  # before data generation and training: a run that cannot be saved is not started
        ensure_writable(run_dir, "the run's checkpoints", "set run_dir=... to a writable directory", create=False)
        if cfg.evaluate_after and not cfg.trainer.fast_dev_run:  # the report, before training rather than after
            report = report_dir_of(cfg.evaluate.report_dir, run_dir)
            hint = "set evaluate.report_dir=... (or evaluate_after=false)"
            ensure_writable(report, "the evaluation report", hint, create=False)
    pretrained = {n for n, s in specs.items() if s.pretrained}
    # with init_from the units not selected are copied frozen, so every unit is written
    units = plan_units(scm.graph, pretrained, None if cfg.init_from else cfg.units)
    names = [u.name for u in plan_units(scm.graph, pretrained)]
    stray = [u for u in cfg.unit_overrides if u not in names]
    if stray:
        raise ConfigError(f"unit_overrides names unknown unit(s) {stray}; units of this graph: {names}")
    for unit in units:  # every unit's settings checked before data generation, not when its turn comes
        if not unit.pretrained:
            unit_settings(cfg, unit)
    tuned = finetune_nodes(scm, [n for u in units if not u.pretrained for n in u.nodes], specs)
    dm = CausalDataModule(
        cfg.dataset.name,
        root=cfg.dataset.root,
        batch_size=cfg.dataset.batch_size,
        eval_batch_size=cfg.dataset.eval_batch_size,
        num_workers=plan.loader_workers,
        shuffle_seed=cfg.seed,
        nodes=list(scm.graph.nodes),
        shapes={n: scm.graph.kinds[n].tensor_shape for n in scm.graph.nodes},
        **OmegaConf.to_container(cfg.dataset.options, resolve=True),
    )
    if cfg.prepare_only:  # one job before an array of unit jobs: they then find the caches, not build them at once
        sizes = {split: len(dm.dataset(split)) for split in ("train", "val", "test")}
        say(f"[imcf] dataset {cfg.dataset.name!r} ready under {cfg.dataset.root}: {sizes}")
        return {"dataset": sizes}
    _write_run_files(run_dir, cfg, scm)
    objectives, finetune = finetune_objectives(cfg, scm, tuned)
    written = {}
    for unit in units:
        if unit.pretrained:
            written[unit.name] = scm.save_unit(run_dir, unit.nodes)
            say(f"[imcf] unit {unit.name!r} is pretrained: loaded frozen, not trained")
            continue
        say(f"[imcf] training unit {unit.name!r}: nodes {list(unit.nodes)}, inputs {list(unit.inputs)}")
        # one live writer per unit (rank 0 holds it for all DDP ranks); array tasks train other units beside it
        lock = run_dir / "checkpoints" / unit.name / "train.lock"
        with unit_lock(lock) if rank_zero_only.rank == 0 else nullcontext():
            written[unit.name] = train_unit(cfg, scm, unit, dm, run_dir, guard, objectives)
        if guard.received:  # the signal came as the unit's last batch ended: it is complete, stop before the next
            raise Preempted(f"stopped by SIGTERM after unit {unit.name!r}; rerun the same command to resume")
    result: dict[str, Any] = {"run_dir": str(run_dir), "units": {k: str(v) for k, v in written.items()}}
    if finetune:
        result["finetune_predictors"] = finetune
    complete = all((run_dir / f"{unit_name(c)}.ckpt").is_file() for c in scm.graph.c_components())
    if rank_zero_only.rank != 0:  # DDP: only rank 0 evaluates and reports
        return result
    if cfg.evaluate_after and complete and not cfg.trainer.fast_dev_run:
        result["evaluate"] = cfg.evaluate  # the caller evaluates (imcf.cli.train_and_evaluate): training never does
    elif cfg.evaluate_after and not complete:
        say("[imcf] not every unit is trained yet: skipping evaluation (run evaluate.py when all are)")
    say(f"[imcf] run directory: {run_dir.resolve()}")
    return result
