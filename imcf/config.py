"""Typed schemas that validate what Hydra composes; an unknown or missing key fails with its full path."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

KIND_GROUP = {"continuous": "attribute", "binary": "discrete", "categorical": "discrete", "image": "image"}


class ConfigError(ValueError):
    """A composed configuration does not match its schema; the message names the key."""


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"
    batch_size: int = 64
    eval_batch_size: int | None = None
    num_workers: int | None = None  # data loader workers; None: the thread plan's (imcf.threads)
    # attributes that act on the images as a global brightness gain (how the data were made): image families
    # that model a gain (VAE, HVAE, DDIM, GAN) take those that are parents of their node as `gain_parents`
    image_gain: list[str] = field(default_factory=list)
    # what the data say about their variables (domains, ranges), per node: merged under mechanism.<node>.config
    # for the nodes of the graph that have them, each key only where the node's family takes it
    node_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_epochs: int = 10
    max_steps: int = -1
    max_time: str | None = None
    fast_dev_run: Any = False
    limit_train_batches: Any = 1.0
    limit_val_batches: Any = 1.0
    check_val_every_n_epoch: int = 1
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    deterministic: Any = False


@dataclass
class EarlyStoppingConfig:
    """Stop a unit once its validation loss has not improved by `min_delta` for `patience` epochs (None: off).
    The best epoch's weights are the unit's result either way."""

    patience: int | None = None
    min_delta: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str | None = None  # "cosine" (to 0 over the unit's steps) or None (constant)
    warmup_steps: int = 0  # linear warm-up of the learning rate over the first N optimiser steps
    # exponential moving average of the weights (e.g. 0.999): validation, checkpoints and the unit's result use the
    # averaged weights; None: the unit's mechanisms decide (`Mechanism.ema_decay`: the DDIM's preset), 0: off
    ema_decay: float | None = None


@dataclass
class LoggerConfig:
    csv: bool = True
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "imcf"
    wandb_entity: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    wandb_mode: str = "offline"  # online | offline | disabled


@dataclass
class InterventionConfig:
    kind: str = "binned"  # binned: a value from another of `bins` equal bins (benchmark) | marginal: any value
    bins: int = 9
    nodes: list[str] | None = None  # attributes to intervene on; None: every non-image node


@dataclass
class PredictorConfig:
    path: str | None = None  # a cached predictor file to use; None: <data_root>/evaluators/<dataset>-...
    inputs: dict[str, list[str]] = field(default_factory=lambda: {"thickness": ["intensity"]})
    width: int = 32
    max_epochs: int = 5
    batch_size: int = 64
    lr: float = 4e-3  # peak of a cosine schedule
    label_smoothing: float = 0.1  # of the categorical heads' cross-entropy
    max_train_samples: int | None = None
    poor_nmae: float = 0.5  # a regressor whose test MAE exceeds this x the attribute's std is flagged poor
    poor_f1: float = 0.7  # a classifier whose test F1 is below this is flagged poor


@dataclass
class RealismConfig:
    features: str = "predictors"  # predictors (domain features) | inception (needs local weights)
    inception_weights: str | None = None
    reference_split: str = "train"  # real images compared with the counterfactuals
    max_reference: int | None = None
    kid_subsets: int = 20
    kid_subset_size: int = 1000


@dataclass
class MinimalityConfig:
    path: str | None = None  # a cached VAE file; None: <data_root>/evaluators/<dataset>-vae-...
    latent_dim: int = 16
    width: int = 32
    max_epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    max_train_samples: int | None = None
    weights: list[float] = field(default_factory=lambda: [0.8, 0.2])


@dataclass
class IdentifyConfig:
    strict: bool = False  # refuse counterfactual queries the graph cannot identify (imcf.identify)


@dataclass
class EvaluateConfig:
    run_dir: str = MISSING
    report_dir: str | None = None  # default: reports/<run name>
    protocol: str = "benchmark"  # name of the protocol these settings follow (configs/metrics/protocol/)
    split: str = "test"
    num_samples: int | None = None  # None: the whole split
    batch_size: int = 128
    seed: int = 0
    accelerator: str = "auto"
    threads: int | None = None  # CPUs this evaluation uses (imcf.threads); None: the affinity mask / SLURM's
    # which metrics to compute. None: every metric the run and dataset support; a list: exactly these
    # (unsupported ones are errors). Named `compute`, not `metrics`: `metrics/` is the protocol config group.
    compute: list[str] | None = None
    cycles: list[int] = field(default_factory=lambda: [1, 10])
    interventions: InterventionConfig = field(default_factory=InterventionConfig)
    predictors: PredictorConfig = field(default_factory=PredictorConfig)
    realism: RealismConfig = field(default_factory=RealismConfig)
    minimality: MinimalityConfig = field(default_factory=MinimalityConfig)
    lpips: bool = False  # LPIPS distances for composition / reversibility (needs local weights)
    measured_max_samples: int | None = 2000  # cap for the (slow) predictor-free morphometric effectiveness
    num_grid: int = 8
    progress: bool = True
    data_root: str | None = None  # default: the run's dataset.root
    options: dict[str, Any] = field(default_factory=dict)  # free-form notes kept in the report
    # per node, inference options of its mechanism family to answer queries under (SCM.set_inference_options),
    # e.g. {image: {guidance_scale: 3.0, num_inference_steps: 10}}; the trained weights are kept
    inference: dict[str, dict[str, Any]] = field(default_factory=dict)
    logger: LoggerConfig | None = None  # None: the training run's loggers (its config.yaml), else CSV
    identify: IdentifyConfig = field(default_factory=IdentifyConfig)


@dataclass
class FinetunePredictorsConfig:
    """Anti-causal predictors that counterfactual fine-tuning trains against (imcf.training.finetune).

    Architecture, epochs and data are the evaluator's (`evaluate.predictors`); the seed differs from the
    evaluator's so that effectiveness is then scored by a classifier the model was not tuned against."""

    seed: int = 1
    path: str | None = None  # a cached predictor file to use; None: trained once and cached under data_root


@dataclass
class TrainConfig:
    name: str = "default"
    seed: int = 0
    threads: int | None = None  # CPUs this run uses (imcf.threads); None: the affinity mask / SLURM's
    data_root: str = "data"
    run_dir: str = MISSING
    units: list[str] | None = None
    # a previous run directory: the units trained here start from its weights, the others are copied frozen
    init_from: str | None = None
    # per-unit changes to `trainer`, `optim` and `early_stopping`, e.g.
    # {image: {trainer: {max_epochs: 5}, optim: {lr: 2e-4}}}
    unit_overrides: dict[str, Any] = field(default_factory=dict)
    evaluate_after: bool = True
    resume: bool = True
    requeue: bool = True  # under SLURM (SLURM_JOB_ID set), a SIGTERM-stopped run requeues its job
    prepare_only: bool = False  # build the dataset's caches (every split) and stop; nothing is trained
    identify: IdentifyConfig = field(default_factory=IdentifyConfig)
    finetune_predictors: FinetunePredictorsConfig = field(default_factory=FinetunePredictorsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    graph: dict[str, Any] = field(default_factory=dict)
    mechanism: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    evaluate: EvaluateConfig = field(default_factory=lambda: EvaluateConfig(run_dir="${run_dir}"))


@dataclass
class MechanismSpec:
    family: str = MISSING
    config: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # a unit checkpoint: weights loaded and frozen (not trained)
    init: str | None = None  # a unit checkpoint: weights loaded, then trained on (fine-tuning)


def report_dir_of(report_dir: str | None, run_dir: str | Path) -> Path:
    """Where an evaluation of `run_dir` writes its report: `report_dir`, or by default reports/<run name>."""
    return Path(report_dir) if report_dir else Path("reports") / Path(run_dir).name


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _range(lo: float, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = True, null: bool = False):
    """A check of one value: a number in [lo, hi) (or (lo, ...) with open_lo), or None where `null`."""

    def ok(v: Any) -> bool:
        if v is None:
            return null
        if not _number(v):
            return False
        above = v > lo if open_lo else v >= lo
        below = hi is None or (v < hi if open_hi else v <= hi)
        return above and below

    if hi is None:
        text = f"{'>' if open_lo else '>='} {lo:g}"
    else:
        text = f"in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    return ok, text + (" (or null)" if null else "")


def _devices_ok(v: Any) -> bool:
    """What Lightning's `Trainer(devices=...)` accepts: "auto", -1, a count >= 1 (also as text), or a non-empty
    list of device indices (also as text "0,1")."""
    if isinstance(v, str):
        v = v.strip()
        if v == "auto":
            return True
        if "," not in v:
            return v.lstrip("-").isdigit() and _devices_ok(int(v))
        parts = [p.strip() for p in v.split(",") if p.strip()]
        return bool(parts) and all(p.isdigit() for p in parts)
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return v == -1 or v >= 1
    return isinstance(v, list) and bool(v) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)


def _one_of(*choices: Any) -> tuple[Any, str]:
    """A check that the value is one of `choices` (None allowed where listed)."""
    return (lambda v: any(v == c and type(v) is type(c) for c in choices), "one of " + ", ".join(map(str, choices)))


def _batches_ok(v: Any) -> bool:
    """Lightning's limit_*_batches: a whole number of batches >= 0 or a fraction in [0, 1]."""
    if isinstance(v, bool) or not _number(v):
        return False
    return v >= 0 if isinstance(v, int) else 0.0 <= v <= 1.0


SPLIT_NAMES = _one_of("train", "val", "test")
#: what Lightning's Trainer(precision=...) takes
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16", "64")
POSITIVE = _range(0, open_lo=True)
AT_LEAST_1 = _range(1)
NON_NEGATIVE = _range(0)
#: value checks of the training settings that a unit override may change too (keys under trainer / optim /
#: early_stopping); the message names the key as given
UNIT_RULES: dict[str, tuple[Any, str]] = {
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.ema_decay": _range(0, 1, null=True),
    "optim.betas": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(_range(0, 1)[0](b) for b in v),
        "two numbers in [0, 1)",
    ),  # fmt: skip
    "optim.scheduler": (lambda v: v is None or v == "cosine", "'cosine' or null (constant)"),
    "trainer.max_epochs": _range(-1),  # -1: no limit (Lightning)
    "trainer.max_steps": _range(-1),  # -1: no limit
    "trainer.limit_train_batches": (_batches_ok, "a whole number of batches >= 0 or a fraction in [0, 1]"),
    "trainer.limit_val_batches": (_batches_ok, "a whole number of batches >= 0 or a fraction in [0, 1]"),
    "trainer.precision": (lambda v: str(v) in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
    "trainer.devices": (_devices_ok, "'auto', -1 (all), a count >= 1 or a non-empty list of device indices >= 0"),
    "trainer.num_nodes": AT_LEAST_1,
    "trainer.check_val_every_n_epoch": AT_LEAST_1,
    "trainer.log_every_n_steps": AT_LEAST_1,
    "early_stopping.min_delta": NON_NEGATIVE,
}
SEED = (_range(0, 2**32 - 1, open_hi=False)[0], "in [0, 4294967295]")  # what numpy (Lightning's seeding) takes
WANDB_MODE = (lambda v: v in ("online", "offline", "disabled"), "one of online, offline, disabled")
TRAIN_RULES: dict[str, tuple[Any, str]] = {
    **UNIT_RULES,
    "seed": SEED,
    "logger.wandb_mode": WANDB_MODE,
    "dataset.batch_size": AT_LEAST_1,
    "dataset.eval_batch_size": _range(1, null=True),
    "dataset.num_workers": _range(0, null=True),
}
EVALUATE_RULES: dict[str, tuple[Any, str]] = {
    "seed": SEED,
    "split": SPLIT_NAMES,
    "accelerator": _one_of("auto", "cpu", "gpu", "cuda"),
    "realism.reference_split": SPLIT_NAMES,
    "realism.features": _one_of("predictors", "inception"),
    "minimality.weights": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(_range(0)[0](w) for w in v) and sum(v) > 0,
        "two weights >= 0, not both 0 ([closer, farther])",
    ),  # fmt: skip
    "logger.wandb_mode": WANDB_MODE,
    "num_samples": _range(1, null=True),
    "batch_size": AT_LEAST_1,
    "cycles": (
        lambda v: isinstance(v, list) and bool(v) and all(AT_LEAST_1[0](c) for c in v),
        "a non-empty list of numbers >= 1",
    ),  # fmt: skip
    "interventions.bins": _range(2),
    "predictors.width": AT_LEAST_1,
    "predictors.max_epochs": AT_LEAST_1,
    "predictors.batch_size": AT_LEAST_1,
    "predictors.lr": POSITIVE,
    "predictors.max_train_samples": _range(1, null=True),
    "minimality.latent_dim": AT_LEAST_1,
    "minimality.width": AT_LEAST_1,
    "minimality.max_epochs": AT_LEAST_1,
    "minimality.batch_size": AT_LEAST_1,
    "minimality.lr": POSITIVE,
    "minimality.max_train_samples": _range(1, null=True),
    "realism.kid_subsets": AT_LEAST_1,
    "realism.kid_subset_size": AT_LEAST_1,
    "measured_max_samples": _range(1, null=True),
    "num_grid": NON_NEGATIVE,
}


def check_values(cfg: Any, rules: dict[str, tuple[Any, str]], prefix: str = "") -> None:
    """Raise ConfigError naming the first key (as `prefix` + key) whose value breaks its rule; keys that `cfg`
    does not hold are skipped."""
    for key, (ok, text) in rules.items():
        node: Any = cfg
        for part in key.split("."):
            if not isinstance(node, DictConfig | dict) or part not in node:
                break
            node = node[part]
        else:
            value = OmegaConf.to_container(node) if isinstance(node, DictConfig | ListConfig) else node
            if not ok(value):
                raise ConfigError(f"{prefix}{key} must be {text}, got {value!r}")


def validate(cfg: Any, schema: type) -> DictConfig:
    """Merge `cfg` onto `schema`; raise ConfigError naming the full key path on unknown/missing/mistyped keys."""
    try:
        # a `???` in the given config would silently take the schema's default in the merge: check it first
        given = sorted(OmegaConf.missing_keys(cfg)) if isinstance(cfg, DictConfig) else []
        if isinstance(cfg, DictConfig):
            # Hydra types the composed config with the schema, and a typed config merges its `+key=...` additions
            # in silently: merge the plain values, so that an unknown key is rejected however it was given
            cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        missing = sorted(set(OmegaConf.missing_keys(merged)) | set(given))
        if missing:
            raise ConfigError(f"missing required config key(s): {missing}")
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(f"invalid config key {key!r}: {e.msg if hasattr(e, 'msg') else e}") from None
    if schema is EvaluateConfig:
        check_values(merged, EVALUATE_RULES)
    elif schema is TrainConfig:
        check_values(merged, TRAIN_RULES)
        check_values(merged.evaluate, EVALUATE_RULES, "evaluate.")
    return merged


def multirun_subdir() -> str:
    """`-<overrides of this job>` inside a Hydra multirun (`-m seed=0,1` -> `-seed=0`), else "": every job of a
    sweep gets its own run directory, and the same sweep started again finds its directories (to resume)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    job = HydraConfig.get().job
    return "-" + (job.override_dirname or f"job{job.num}").replace("/", "_")


def pick(key: Any, table: Any, default: Any) -> Any:
    """`${imcf_pick:KEY,{a: 1, b: 2},DEFAULT}`: the table's value for KEY, else DEFAULT; e.g. a setting per image
    family in an experiment file (`${imcf_pick:${oc.select:mechanism.image.family,image},{vae: 2.0e-3},1.0e-3}`)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"imcf_pick: the table must be a mapping like {{vae: 2.0e-3}}, got {table!r}")
    value = table.get(key, default)
    # a list or mapping goes back as a config node: `OmegaConf.resolve` (in place) cannot store a plain list
    return OmegaConf.create(value) if isinstance(value, list | dict | ListConfig | DictConfig) else value


def mechanism_preset(path: str | Path, graph: str | None = None) -> dict[str, Any]:
    """A mechanism preset file (e.g. configs/mechanism/image/hvae.yaml) as plain data, with its per-graph settings
    (`${imcf_pick:${oc.select:graph.name,none},...}`) resolved as a run on the graph named `graph` resolves them
    (None: every table's default). For code that builds a mechanism from a preset outside train.py."""
    from imcf.io import read_yaml

    spec = read_yaml(path)  # `imcf_pick` is registered when this module is imported (register_configs below)
    if not isinstance(spec, Mapping) or "defaults" in spec:
        raise ConfigError(
            f"{path}: not a stand-alone mechanism preset (a `defaults` list needs Hydra's composition: "
            "use train.py's config, e.g. `mechanism/image=<name>`)"
        )
    root = {"preset": spec}
    if graph is not None:
        root["graph"] = {"name": graph}
    return OmegaConf.to_container(OmegaConf.create(root), resolve=True)["preset"]  # type: ignore[index]


def register_configs() -> None:
    """Register the schemas with Hydra so that composition itself rejects unknown keys (full path named)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="evaluate_schema", node=EvaluateConfig)
    if not OmegaConf.has_resolver("imcf_multirun"):
        OmegaConf.register_new_resolver("imcf_multirun", multirun_subdir)
    if not OmegaConf.has_resolver("imcf_pick"):
        OmegaConf.register_new_resolver("imcf_pick", pick)


register_configs()


def composition_error(e: BaseException) -> str | None:
    """One line for a config that Hydra cannot compose: a YAML file it cannot parse (duplicate key, bad
    indentation: file, line and problem) or an override / config group it refuses; None for anything else."""
    import yaml
    from hydra.errors import HydraException

    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"{mark.name}, line {mark.line + 1}: " if mark is not None else ""
        return f"{where}{e.problem or e.context}" + (f" ({e.context})" if e.context and e.problem else "")
    if isinstance(e, yaml.YAMLError | HydraException | OmegaConfBaseException):
        cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else None
        text = str(e).split("Config search path")[0]  # Hydra appends every search path: not the user's problem
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        lines += [str(cause).splitlines()[0]] if cause is not None and str(cause) else []
        parts: list[str] = []
        for line in lines:  # "Available options in 'graph':" and one option per line -> "...: a, b, c"
            if parts and parts[-1].endswith((":", ",")) and " " not in line:
                parts[-1] += f" {line},"
            else:
                parts.append(line)
        return "; ".join(p.rstrip(",") for p in parts)
    return None


def run_entry(main: Callable[[], Any]) -> None:
    """Run a Hydra entry point (`train.py`, `evaluate.py`) so that a config Hydra cannot compose ends in
    `error: ...` on one line and exit status 1, like every other user error (Hydra prints a whole traceback for a
    malformed YAML file). With HYDRA_FULL_ERROR set by the user, Hydra reports as it always does."""
    if os.environ.get("HYDRA_FULL_ERROR"):
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing; we report
    try:
        main()
    except Exception as e:  # noqa: BLE001 - only composition errors are reported here; the rest re-raised
        job = getattr(getattr(main, "__wrapped__", None), "__code__", None)  # the body under @hydra.main
        tb, in_job = e.__traceback__, False
        while tb is not None and not in_job:
            in_job, tb = tb.tb_frame.f_code is job, tb.tb_next
        message = None if in_job else composition_error(e)
        if message is None:  # raised by the job itself (its user errors were reported inside): a bug
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
