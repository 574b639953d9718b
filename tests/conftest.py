"""Test-wide settings: trackers offline, few threads, quiet Lightning."""

import logging
import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
