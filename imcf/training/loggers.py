"""Experiment trackers by config: CSV (default), TensorBoard, wandb (offline unless credentials are set)."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch import Tensor

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


def wandb_ids(run_dir: str | Path, name: str) -> tuple[str, str]:
    """(group, run id) of one unit of a training run: the group is the run directory's name, the id is stable
    across restarts (so a resumed unit continues its wandb run) and differs between run directories."""
    run_dir = Path(run_dir).resolve()
    digest = hashlib.sha1(f"{run_dir}\n{name}".encode()).hexdigest()[:12]
    return run_dir.name, re.sub(r"[^A-Za-z0-9_-]", "_", f"{run_dir.name[:24]}-{name[:16]}-{digest}")  # <= 54 chars


def build_loggers(
    cfg: Any,
    save_dir: str | Path,
    name: str,
    hparams: dict[str, Any] | None = None,
    resume_step: int | None = None,
    group: str | None = None,
    run_id: str | None = None,
) -> list[Logger]:
    """Loggers named in `cfg` (a LoggerConfig), all writing under `save_dir`; `resume_step`: the global step of
    the checkpoint training resumes from (None: a fresh start), so that the CSV history is continued. wandb: one
    run named `name` in `group`, resumed when `run_id` exists already; end it with `finish_loggers`."""
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
                group=group,
                id=run_id,
                resume="allow" if run_id else None,
                job_type="evaluate" if name == "evaluate" else "train",
            )
        )
    if hparams:
        for lg in loggers:
            lg.log_hyperparams(hparams)
    return loggers


def finish_loggers(loggers: list[Logger], hparams: dict[str, Any], final: dict[str, float]) -> None:
    """End a unit's (or an evaluation's) logging: TensorBoard gets the hyper-parameters with the final metrics
    (its HParams tab), wandb the final metrics as the run summary, and its run is finished, so that the next
    unit gets a run of its own instead of reusing this one."""
    final = {k: float(v) for k, v in final.items() if v is not None and math.isfinite(float(v))}
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(hparams, final)
            lg.finalize("success")
        elif type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update(final)
            lg.experiment.finish()
        else:
            lg.save()


def label_rows(grid: Tensor, labels: list[str], padding: int = 2) -> Tensor:
    """A grid made by `make_grid(..., padding=padding)` with a white margin on the left naming each row."""
    from PIL import Image, ImageDraw

    c, h, w = grid.shape
    rows = len(labels)
    row_h = (h - padding) / rows
    margin = 6 * max(len(t) for t in labels) + 8
    canvas = Image.new("RGB", (margin, h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(labels):
        draw.text((4, padding + i * row_h + row_h / 2 - 5), text, fill="black")
    strip = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float().div(255)
    return torch.cat([strip[:c] if c in (1, 3) else strip.mean(0, keepdim=True).expand(c, h, margin), grid], dim=2)


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
