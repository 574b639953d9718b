"""A plain torch loop over one mechanism's `loss`: what tests, benchmarks and notebooks use to train a mechanism
alone, without Lightning (the unit module runs the same steps inside Lightning)."""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from imcf.mechanisms.base import Mechanism


def fit_mechanism(
    mech: Mechanism,
    x: Tensor,
    parents: Mapping[str, Tensor],
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    cosine: bool = False,
    objective: nn.Module | None = None,
) -> dict[str, float]:
    """Adam on `mech.loss` over `steps` minibatches drawn uniformly (with replacement) from (x, parents) by a
    generator seeded with `seed`; the family's `stabilise_gradients` clips or skips as it says; `cosine` decays the
    learning rate to 0 over the steps. `objective` replaces `mech.loss` (counterfactual fine-tuning:
    `imcf.training.finetune.CounterfactualObjective`, its multiplier in its own optimiser group). Leaves the
    mechanism in eval mode; returns the last loss, the steps skipped and the wall seconds taken."""
    if mech.manual_optimization:
        raise ValueError(f"{mech.node!r}: {type(mech).__name__} trains itself with several optimisers; use train.py")
    gen = torch.Generator().manual_seed(seed)
    groups = [{"params": list(mech.parameters()), "lr": lr}, *(objective.optimizer_groups(lr) if objective else [])]
    opt = torch.optim.Adam(groups, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    n = x.shape[0]
    loss, skipped = torch.tensor(float("nan")), 0
    mech.train()
    if objective is not None:
        objective.train()
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch_size,), generator=gen).to(x.device)
        pa = {p: v[idx] for p, v in parents.items()}
        loss = (objective.loss(mech, x[idx], pa) if objective is not None else mech.loss(x[idx], pa))["loss"]
        opt.zero_grad()
        loss.backward()
        stabilised = mech.stabilise_gradients()
        if stabilised is not None and stabilised[1]:
            skipped += 1
        else:
            opt.step()
        if sched is not None:
            sched.step()
    mech.eval()
    if objective is not None:
        objective.eval()
    return {"loss": float(loss.detach()), "skipped_steps": skipped, "seconds": time.perf_counter() - start}
