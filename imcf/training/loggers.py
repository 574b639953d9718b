"""Experiment trackers by config: CSV (default), TensorBoard, wandb (offline unless credentials are set)."""

from __future__ import annotations

import csv
import io
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from imcf.io import atomic_write_text


class _NoVendorTips(logging.Filter):
    """Drop Lightning's advertisements ("💡 Tip: ... litlogger / litmodels") from the console and the job log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def configure_console() -> None:
    """Each log line once: under Hydra (root handlers set) Lightning's own console handler is removed, so its lines
    go through Hydra's (console and job log) alone; vendor tips and the expected "checkpoint directory is not empty"
    warning of a resumed run are dropped."""
    if logging.getLogger().hasHandlers():
        lightning = logging.getLogger("lightning")
        for handler in list(lightning.handlers):
            lightning.removeHandler(handler)
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoVendorTips) for f in logger.filters):
            logger.addFilter(_NoVendorTips())
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing `metrics.csv` is continued instead of deleted.

    Rows at or after `resume_step` (logged after the checkpoint training resumes from, so about to be logged
    again) are dropped; `resume_step=None` (a fresh start) moves the old file aside as `metrics-<time>.csv`.
    """

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step is None:
            path.rename(path.with_name(f"metrics-{time.strftime('%Y%m%d-%H%M%S')}.csv"))
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) < self.resume_step]
            keys = list(reader.fieldnames or [])
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, out.getvalue())
        self.metrics_keys = sorted(keys)


class AppendingCSVLogger(CSVLogger):
    """CSVLogger whose history survives restarts (see `_AppendingWriter`)."""

    def __init__(self, save_dir: str, name: str, resume_step: int | None) -> None:
        super().__init__(save_dir, name=name, version=0)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self.resume_step)
        return self._experiment


def build_loggers(
    cfg: Any, save_dir: str | Path, name: str, hparams: dict[str, Any] | None = None, resume_step: int | None = None
) -> list[Logger]:
    """Loggers named in `cfg` (a LoggerConfig), all writing under `save_dir`; `resume_step`: the global step of
    the checkpoint training resumes from (None: a fresh start), so that the CSV history is continued."""
    save_dir = str(save_dir)
    loggers: list[Logger] = []
    if cfg.csv:
        loggers.append(AppendingCSVLogger(save_dir, name=name, resume_step=resume_step))
    if cfg.tensorboard:
        loggers.append(TensorBoardLogger(save_dir, name=f"tb_{name}", version=0, default_hp_metric=False))
    if cfg.wandb:
        from lightning.pytorch.loggers import WandbLogger

        mode = os.environ.get("WANDB_MODE", cfg.wandb_mode)
        loggers.append(
            WandbLogger(
                name=name,
                project=cfg.wandb_project,
                entity=cfg.wandb_entity,
                tags=list(cfg.wandb_tags),
                save_dir=save_dir,
                mode=mode,
            )
        )
    if hparams:
        for lg in loggers:
            lg.log_hyperparams(hparams)
    return loggers


def log_images(loggers: list[Logger], key: str, images: Any, step: int = 0) -> None:
    """Send an image grid (CHW float in [0, 1]) to every logger that can show images."""
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.experiment.add_image(key, images, global_step=step)
        elif type(lg).__name__ == "WandbLogger":
            lg.log_image(key=key, images=[images.permute(1, 2, 0).cpu().numpy()], step=step)


def log_metrics(loggers: list[Logger], metrics: dict[str, float], step: int = 0) -> None:
    """Send flat scalar metrics to every logger and flush them."""
    for lg in loggers:
        lg.log_metrics(metrics, step=step)
        lg.save()
