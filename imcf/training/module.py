"""One LightningModule that trains any unit (one or several mechanisms)."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from imcf.mechanisms.base import Mechanism
from imcf.mechanisms.component import ConfoundedComponent


class UnitModule(L.LightningModule):
    """Trains the mechanisms of one unit on their nodes and parents; logs every term of every loss.

    Likelihood families use automatic optimisation on the summed loss. A family that sets
    `manual_optimization = True` (adversarial training) provides `configure_unit_optimizers(optim)` and
    `manual_training_step(x, parents, optimizers, module)`; the module then runs in manual mode.
    """

    def __init__(
        self,
        mechanisms: Mapping[str, Mechanism],
        optim: Mapping[str, Any] | None = None,
        component: ConfoundedComponent | None = None,
        objectives: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.mechanisms = nn.ModuleDict(dict(mechanisms))
        # per node, an objective that replaces the mechanism's own loss (counterfactual fine-tuning:
        # imcf.training.finetune.CounterfactualObjective); its state (a Lagrange multiplier) is checkpointed here
        self.objectives = nn.ModuleDict(dict(objectives or {}))
        self.component = component  # shared confounder noise of a confounded unit: trained jointly
        self.optim = dict(optim or {})
        manual = [n for n, m in self.mechanisms.items() if m.manual_optimization]
        if manual and len(self.mechanisms) > 1:
            raise ValueError(f"adversarial mechanism(s) {manual} must be alone in their unit")
        self.automatic_optimization = not manual

    @staticmethod
    def _parents(mech: Mechanism, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {p: batch[p] for p in mech.parents}

    def _losses(self, batch: Mapping[str, Tensor], stage: str) -> Tensor:
        total = 0.0
        bs = next(iter(batch.values())).shape[0]
        sync = stage != "train"
        if self.component is not None:  # joint objective of a confounded c-component
            terms = self.component.loss(batch, self.mechanisms)
            for k, v in terms.items():
                if k != "loss":
                    self.log(f"{stage}/{k}", v.detach().float(), batch_size=bs, on_epoch=True, sync_dist=sync)
            total = terms["loss"]
        for node, mech in self.mechanisms.items() if self.component is None else ():
            if node in self.objectives:
                terms = self.objectives[node].loss(mech, batch[node], self._parents(mech, batch))
            else:
                terms = mech.loss(batch[node], self._parents(mech, batch))
            for k, v in terms.items():
                self.log(f"{stage}/{node}/{k}", v.detach().float(), batch_size=bs, on_epoch=True, sync_dist=sync)
            total = total + terms["loss"]
        self.log(
            f"{stage}/loss", total.detach(), prog_bar=True, batch_size=bs, on_epoch=True, sync_dist=stage != "train"
        )
        return total

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            return self._losses(batch, "train")
        ((node, mech),) = self.mechanisms.items()
        terms = mech.manual_training_step(batch[node], self._parents(mech, batch), self.optimizers(), self)
        bs = batch[node].shape[0]
        for k, v in terms.items():
            self.log(f"train/{node}/{k}", v.detach().float(), batch_size=bs, on_epoch=True)
        return None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Let families that stabilise their own gradients (clip, or skip a step on a huge norm: VDVAE) do so."""
        if not self.automatic_optimization:  # adversarial families handle their own optimisers
            return
        for node, mech in self.mechanisms.items():
            stabilised = mech.stabilise_gradients()
            if stabilised is None:
                continue
            norm, skip = stabilised
            self.log(f"train/{node}/grad_norm", norm, on_step=True, on_epoch=False)
            if skip:  # a parameter without a gradient is left alone by the optimiser: the update is skipped
                for p in mech.parameters():
                    p.grad = None
                self.log(f"train/{node}/skipped_step", 1.0, on_step=True, on_epoch=False)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        self._losses(batch, "val")
        if batch_idx == 0:
            self._grid_batch = {k: v[: self.num_grid] for k, v in batch.items()}

    num_grid: int = 8

    @torch.no_grad()
    def image_grids(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """For each image node: rows factual | reconstruction | fresh sample | counterfactual whose parents
        are taken from the next sample in the batch (a mechanism-level intervention on all parents), each row
        named in a margin on the left."""
        from torchvision.utils import make_grid

        from imcf.training.loggers import label_rows

        grids = {}
        for node, mech in self.mechanisms.items():
            if not mech.kind.is_image:
                continue
            x = batch[node]
            pa = self._parents(mech, batch)
            shifted = {p: v.roll(1, dims=0) for p, v in pa.items()}
            noise = mech.abduct(x, pa)
            rows = [x, mech.predict(noise, pa), mech.sample(pa, n=x.shape[0]), mech.predict(noise, shifted)]
            images = torch.cat(rows).clamp(-1, 1).add(1).div(2).float()
            grid = make_grid(images, nrow=x.shape[0], padding=2)
            labels = ["factual", "recon", "sample", "cf"]
            grids[f"val/{node}/factual_recon_sample_counterfactual"] = label_rows(grid, labels, padding=2)
        return grids

    def on_validation_epoch_end(self) -> None:
        batch = getattr(self, "_grid_batch", None)
        if batch is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        from imcf.training.loggers import log_images

        for key, grid in self.image_grids(batch).items():
            log_images(self.loggers, key, grid.cpu(), step=self.global_step)

    def configure_optimizers(self) -> Any:
        if not self.automatic_optimization:
            (mech,) = self.mechanisms.values()
            return mech.configure_unit_optimizers(self.optim)
        lr = float(self.optim.get("lr", 1e-3))
        groups, grouped = [], set()
        hooks = [*self.mechanisms.values(), *self.objectives.values()]  # own groups, e.g. a Lagrange multiplier
        for owner in hooks:
            for g in owner.optimizer_groups(lr):
                groups.append(g)
                grouped.update(id(p) for p in g["params"])
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in grouped]
        if rest:
            groups.append({"params": rest, "lr": lr})
        opt = torch.optim.Adam(
            [g for g in groups if g["params"]],
            lr=lr,
            betas=tuple(self.optim.get("betas", (0.9, 0.999))),
            weight_decay=float(self.optim.get("weight_decay", 0.0)),
        )
        scheduler, warmup = self.optim.get("scheduler"), int(self.optim.get("warmup_steps", 0))
        if scheduler not in (None, "cosine"):
            raise ValueError(f"optim.scheduler must be 'cosine' or null, got {scheduler!r}")
        if warmup < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {warmup}")
        if scheduler is None and not warmup:
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, functools.partial(lr_factor, warmup=warmup, total=total, cosine=scheduler == "cosine")
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_end(self) -> None:
        """Under DDP, check that every rank ended with the same weights (they must, or training diverged)."""
        if self.trainer.world_size <= 1:
            return
        flat = torch.cat([p.detach().flatten().float() for p in self.parameters()])
        gathered = self.all_gather(flat)
        if not torch.all(gathered == gathered[0]):
            raise RuntimeError("DDP ranks disagree on the unit's weights after training")
        rank_zero_info(
            f"[imcf] {self.trainer.world_size} ranks agree on the weights of "
            f"{list(self.mechanisms)} (sum {flat.sum().item():.6g})"
        )

    # Every generator travels with checkpoints (CPU, each CUDA device, Python, NumPy) so that a resumed run
    # continues exactly where it stopped, on GPU too.
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["imcf_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict") or {}
        for node in self.objectives:  # before 12-2026 the fine-tuning state lived in the mechanism: move it
            for key in ("lagrange_raw", "elbo_bound"):
                if f"mechanisms.{node}.{key}" in state and f"objectives.{node}.{key}" not in state:
                    state[f"objectives.{node}.{key}"] = state.pop(f"mechanisms.{node}.{key}")
        rng = checkpoint.get("imcf_rng")
        if rng is not None:
            set_rng_state(rng)


def lr_factor(step: int, warmup: int, total: int, cosine: bool) -> float:
    """The learning-rate multiplier at optimiser step `step` (0-based): a linear warm-up over the first `warmup`
    steps (1/warmup, 2/warmup, ..., 1), times a cosine decay from 1 to 0 over `total` steps when `cosine`."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if cosine:
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return factor


def rng_state() -> dict[str, Any]:
    """The state of every random generator a unit's training draws from."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002  (the global one is what code uses)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # as a tensor and plain numbers: checkpoints are read with weights_only=True
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved; CUDA states only onto as many devices as were saved."""
    torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) != torch.cuda.device_count():
            raise RuntimeError(
                f"checkpoint holds the generators of {len(cuda)} CUDA device(s), this process sees "
                f"{torch.cuda.device_count()}: resume on the same devices"
            )
        torch.cuda.set_rng_state_all(cuda)
