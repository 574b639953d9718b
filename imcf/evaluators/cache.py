"""Models the evaluator trains offline (predictors, the minimality VAE): one cached-fit recipe, one Lightning loop.

A cached model lives at `<data_root>/evaluators/<dataset>-<what>-<hash>.ckpt`; the hash covers everything that
shapes it (dataset name and options, the nodes it reads, its hyper-parameters), and the file repeats that
description in `meta`, which is checked again on load.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from imcf.data.base import stack_batch
from imcf.io import MissingFileError, atomic_torch_save, safe_torch_load


class CacheMismatchError(ValueError):
    """A cached evaluator model was made for another dataset / graph / setting than the one evaluated."""


def cache_key(spec: Mapping[str, Any]) -> str:
    """12 hex digits naming a model description (order of keys does not matter)."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_path(data_root: str | Path, what: str, spec: Mapping[str, Any]) -> Path:
    """Default file of the model `what` ("predictors", "vae") described by `spec` (needs spec["dataset"])."""
    return Path(data_root) / "evaluators" / f"{spec['dataset']}-{what}-{cache_key(spec)}.ckpt"


def save_cached(path: str | Path, spec: Mapping[str, Any], state: Mapping[str, Any]) -> Path:
    """Atomically write `state` with its description `spec`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save({"meta": _plain(spec), **state}, path)


def load_cached(path: str | Path, spec: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Load a cached model and check it was made for `spec`; raise CacheMismatchError naming the difference."""
    ckpt = safe_torch_load(path, recover=f"delete it and the next evaluation trains the {what} model again")
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict):
        raise CacheMismatchError(f"{path} is not an imcf {what} cache (no 'meta'); delete it or point elsewhere")
    if meta.get("dataset") != spec.get("dataset"):
        raise CacheMismatchError(
            f"{what} cache {path} was trained on dataset {meta.get('dataset')!r}, but this run evaluates "
            f"{spec.get('dataset')!r}: use that dataset's cache (or remove {what}.path to train new ones)"
        )
    want = _plain(spec)
    for key in sorted(set(meta) | set(want)):
        if meta.get(key) != want.get(key):
            raise CacheMismatchError(
                f"{what} cache {path} was made with {key}={meta.get(key)!r}, this evaluation needs "
                f"{key}={want.get(key)!r}; delete the file or point {what}.path elsewhere"
            )
    return ckpt


M = TypeVar("M", bound=nn.Module)


def seeded(seed: int, build: Callable[[], M]) -> M:
    """`build()` with torch's generator seeded by `seed` (and restored afterwards): an evaluator model's initial
    weights come from its seed, not from whatever the process drew before (a model trained after a training run
    and one trained by evaluate.py alone differed, and so did every score read with them)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def model_spec(
    what: str,
    version: int,
    dataset: str,
    options: Mapping[str, Any],
    fingerprint: Mapping[str, Any] | None,
    image_node: str,
    image_shape: Any,
    cfg: Any,
    seed: int,
    **extra: Any,
) -> dict[str, Any]:
    """What names a cached evaluator model (its file's hash and the check on load cover all of it): the dataset
    and its content, the image it reads, the training settings of `cfg` (width, max_epochs, batch_size, lr,
    max_train_samples), the seed, and the model's own `extra` settings."""
    return {
        "what": what,
        "version": version,
        "dataset": dataset,
        "options": dict(options),
        "data": dict(fingerprint or {}),
        "image_node": image_node,
        "image_shape": [int(s) for s in image_shape],
        **extra,
        "width": int(cfg.width),
        "max_epochs": int(cfg.max_epochs),
        "batch_size": int(cfg.batch_size),
        "lr": float(cfg.lr),
        "max_train_samples": cfg.max_train_samples,
        "seed": seed,
    }


def load_or_fit(
    what: str,
    spec: Mapping[str, Any],
    model: nn.Module,
    path: str | Path | None,
    data_root: str | Path,
    train: Callable[[], Mapping[str, Any]],
) -> tuple[dict[str, Any], str]:
    """Load `model`'s weights cached for `spec`, or train it and cache it: the recipe of every evaluator model.

    `path` is the user's file (`<what>.path`; it must exist) or None for the default file under `data_root`
    (`cache_path`). `train()` fits `model` in place and returns what else to cache beside its weights (e.g. its
    test quality). Returns (the cached entries, the file).
    """
    file = Path(path) if path else cache_path(data_root, f"{spec['what']}-{spec['image_node']}", spec)
    if path and not file.is_file():
        raise MissingFileError(f"{what}.path={path}: no such file")
    if file.is_file():
        ckpt = load_cached(file, spec, what)
        model.load_state_dict(ckpt["state_dict"])
        return ckpt, str(file)
    extra = train()
    state = {"state_dict": model.state_dict(), **extra}
    save_cached(file, spec, state)
    print(f"[imcf] {what} model cached at {file}")
    return state, str(file)


def dataset_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """What identifies a dataset's content beyond the options given: its class (by its registered name, so that
    moving the code does not orphan the caches; the qualified name for an unregistered class) and its resolved
    options (`dataset.options` where the dataset keeps them, e.g. Morpho-MNIST's generator version and upscale)."""
    cls = type(dataset)
    return {
        "class": getattr(cls, "registry_name", None) or f"{cls.__module__}.{cls.__qualname__}",
        "resolved_options": _plain(getattr(dataset, "options", None)),
    }


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


class OfflineModule(L.LightningModule):
    """Trains any evaluator model that has `loss(batch) -> {"loss": ..., ...}` with AdamW, at a constant
    learning rate or (`cosine`) one that anneals to zero over the run, step by step."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, cosine: bool = False) -> None:
        super().__init__()
        self.model, self.lr, self.cosine = model, lr, cosine

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        terms = self.model.loss(batch)
        bs = next(iter(batch.values())).shape[0]
        for k, v in terms.items():
            self.log(f"train/{k}", v.detach(), prog_bar=k == "loss", batch_size=bs)
        return terms["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        bs = next(iter(batch.values())).shape[0]
        self.log("val/loss", self.model.loss(batch)["loss"], batch_size=bs)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr)
        if not self.cosine:
            return optimizer
        steps = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def subset(dataset: Dataset, limit: int | None, seed: int = 0) -> Dataset:
    """A seeded random subset of at most `limit` items (all of them when limit is None)."""
    n = len(dataset)
    if limit is None or limit >= n:
        return dataset
    return Subset(dataset, torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].tolist())


def fit(
    model: nn.Module,
    train: Dataset,
    val: Dataset | None,
    max_epochs: int,
    batch_size: int,
    lr: float,
    accelerator: str = "auto",
    seed: int = 0,
    progress: bool = True,
    cosine: bool = False,
) -> nn.Module:
    """Train `model` with one Lightning Trainer run (no checkpoints, no loggers); returns it in eval mode on CPU."""
    L.seed_everything(seed, workers=True, verbose=False)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen, collate_fn=stack_batch)
    val_loader = DataLoader(val, batch_size=batch_size, collate_fn=stack_batch) if val is not None else None
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu" if accelerator == "cpu" else "auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_loader is not None else 0,
    )
    trainer.fit(OfflineModule(model, lr, cosine), loader, val_loader)
    return model.cpu().eval()


def fit_from_config(
    model: nn.Module,
    train: Dataset,
    val: Dataset,
    cfg: Any,
    accelerator: str = "auto",
    seed: int = 0,
    progress: bool = True,
    cosine: bool = False,
) -> nn.Module:
    """`fit` with an evaluator config's settings (max_train_samples, max_epochs, batch_size, lr); at most 2,000
    validation items."""
    return fit(
        model,
        subset(train, cfg.max_train_samples, seed),
        subset(val, 2000, seed),
        int(cfg.max_epochs),
        int(cfg.batch_size),
        float(cfg.lr),
        accelerator,
        seed,
        progress,
        cosine,
    )
