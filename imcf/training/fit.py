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
    ema_decay: float | None = None,
) -> dict[str, float]:
    """Adam on `mech.loss` over `steps` minibatches drawn uniformly (with replacement) from (x, parents) by a
    generator seeded with `seed`; the family's `stabilise_gradients` clips or skips as it says; `cosine` decays the
    learning rate to 0 over the steps. `objective` replaces `mech.loss` (counterfactual fine-tuning:
    `imcf.training.finetune.CounterfactualObjective`, its multiplier in its own optimiser group). `ema_decay`
    (None: what the mechanism asks for, `Mechanism.ema_decay`; 0: off) keeps an exponential moving average of the
    parameters, with the usual warm-up min(decay, (1 + k) / (10 + k)) at step k, and leaves the mechanism with the
    averaged parameters (its buffers as trained), as a train.py unit does. Leaves the mechanism in eval mode;
    returns the last loss, the steps skipped and the wall seconds taken."""
    if mech.manual_optimization:
        raise ValueError(f"{mech.node!r}: {type(mech).__name__} trains itself with several optimisers; use train.py")
    decay = float((mech.ema_decay if ema_decay is None else ema_decay) or 0.0)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"{mech.node!r}: ema_decay must be in [0, 1) (0 or None: off), got {decay}")
    params = list(mech.parameters())
    averaged = [p.detach().clone() for p in params] if decay else None
    gen = torch.Generator().manual_seed(seed)
    groups = [*mech.optimizer_groups(lr), *(objective.optimizer_groups(lr) if objective else [])]
    opt = torch.optim.Adam(groups, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    n = x.shape[0]
    loss, skipped = torch.tensor(float("nan")), 0
    mech.train()
    if objective is not None:
        objective.train()
    start = time.perf_counter()
    for step in range(steps):
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
            if averaged is not None:
                weight = 1.0 - min(decay, (2.0 + step) / (11.0 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(averaged, [p.detach() for p in params], weight)
        if sched is not None:
            sched.step()
    if averaged is not None:
        with torch.no_grad():
            torch._foreach_copy_(params, averaged)
    mech.eval()
    if objective is not None:
        objective.eval()
    return {"loss": float(loss.detach()), "skipped_steps": skipped, "seconds": time.perf_counter() - start}
