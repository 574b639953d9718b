"""Experiment trackers by config: CSV (default), TensorBoard, wandb (offline unless credentials are set)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger


def build_loggers(cfg: Any, save_dir: str | Path, name: str, hparams: dict[str, Any] | None = None) -> list[Logger]:
    """Loggers named in `cfg` (a LoggerConfig), all writing under `save_dir`."""
    save_dir = str(save_dir)
    loggers: list[Logger] = []
    if cfg.csv:
        loggers.append(CSVLogger(save_dir, name=name, version=0))
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
