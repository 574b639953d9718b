"""Counterfactual fine-tuning (Ribeiro et al. 2023, "High Fidelity Image Counterfactuals with Probabilistic Causal
Models"): the constrained objective that makes a mechanism's counterfactuals show their parents, and its wiring
into `train.py`.

A mechanism whose family is `finetunable` (its `loss` reports the ELBO it is bounded by) and whose config sets
`counterfactual_finetune.enabled: true` trains on `CounterfactualObjective` with anti-causal predictors. They
are the evaluator's predictors (`imcf.evaluators.predictors`: same architecture, epochs and data as
`evaluate.predictors`) trained with another seed (`finetune_predictors.seed`), cached under the data root, so
effectiveness is scored afterwards by a classifier the model was not tuned against. The mechanism starts from a
trained run (`init_from=<run>` or `+mechanism.image.init=<run>/image.ckpt`): see docs/training.md,
"Counterfactual fine-tuning".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from imcf.config import ConfigError, PredictorConfig
from imcf.evaluators.cache import dataset_fingerprint
from imcf.evaluators.predictors import FrozenPredictor, load_or_train_predictors
from imcf.io import MissingFileError
from imcf.mechanisms.base import Mechanism
from imcf.scm import SCM

#: an anti-causal predictor: image batch -> prediction of one attribute (continuous: values (B, 1) in the
#: attribute's units; binary: logits (B, 1); categorical: logits (B, K))
Predictor = Callable[[Tensor], Tensor]
#: one predictor for several attributes: (image batch, counterfactual parents) -> {attribute: prediction}, the
#: parents feeding heads that take extra inputs (e.g. `imcf.evaluators.predictors.FrozenPredictor`)
JointPredictor = Callable[[Tensor, Mapping[str, Tensor]], Mapping[str, Tensor]]


def finetunes(mech: Mechanism) -> bool:
    """Whether a mechanism is configured for counterfactual fine-tuning (`counterfactual_finetune.enabled`)."""
    return bool(mech.counterfactual_finetune.get("enabled", False))


class CounterfactualObjective(nn.Module):
    """min_theta max_lambda>=0 weight * CF(theta) + lambda * (ELBO_loss(theta) - bound) for one mechanism.

    CF is the predictors' loss on the mechanism's counterfactuals (abducted and predicted with gradients, so the
    decoder learns to honour new parents); the bound is `elbo_bound` or, when null, the first batch's ELBO.
    It holds the Lagrange multiplier and the bound (checkpointed with the training module), and the predictors
    (not state). The mechanism is passed to each call, so its parameters stay the mechanism's own.
    `options`: the mechanism's `counterfactual_finetune` {enabled, weight, elbo_bound, lagrange_init,
    lagrange_lr_scale, gain_parents (whether the predictors also judge the output-gain parents; default no)}.
    """

    def __init__(self, mech: Mechanism, options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not mech.finetunable:
            raise ValueError(f"{mech.node!r}: family {type(mech).__name__} cannot be fine-tuned (no ELBO bound)")
        self.node, self.parent_kinds = mech.node, dict(mech.parent_kinds)
        self.options = dict(mech.counterfactual_finetune if options is None else options)
        # the parents the predictors judge: all, or (default) those the networks draw; then the output gain stays
        # as the likelihood fitted it (frozen: the other parents' predictors would otherwise bend it)
        skip = () if self.options.get("gain_parents", False) else mech.gain_parents
        self.judged = tuple(p for p in mech.parents if p not in skip)
        for param in mech.gain_parameters() if skip else ():
            param.requires_grad_(False)
        init = float(self.options.get("lagrange_init", 1.0))
        self.lagrange_raw = nn.Parameter(torch.tensor(math.log(math.expm1(max(init, 1e-6)))))  # softplus: >= 0
        self.register_buffer("elbo_bound", torch.tensor(float("nan")))
        if self.options.get("elbo_bound") is not None:
            self.elbo_bound.fill_(float(self.options["elbo_bound"]))
        self.predictors: dict[str, Predictor] | JointPredictor = {}

    def set_predictors(self, predictors: Mapping[str, Predictor] | JointPredictor) -> None:
        """{parent: image -> prediction}, or one joint callable (image, parents) -> {parent: prediction}."""
        if not isinstance(predictors, Mapping):
            self.predictors = predictors
            return
        unknown = set(predictors) - set(self.parent_kinds)
        if unknown:
            raise KeyError(f"predictors given for non-parents {sorted(unknown)} of {self.node!r}")
        self.predictors = dict(predictors)

    @property
    def lagrange(self) -> Tensor:
        """The Lagrange multiplier of the ELBO constraint (>= 0)."""
        return F.softplus(self.lagrange_raw)

    def optimizer_groups(self, lr: float) -> list[dict[str, Any]]:
        """The multiplier's own group at `lr * lagrange_lr_scale` (a gradient scale alone would be undone by Adam's
        normalisation)."""
        return [{"params": [self.lagrange_raw], "lr": lr * float(self.options.get("lagrange_lr_scale", 1.0))}]

    def loss(self, mech: Mechanism, x: Tensor, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The mechanism's loss terms with its ELBO replaced by the constrained counterfactual objective (other
        terms of its loss, e.g. the independence penalty, are kept)."""
        terms = dict(mech.loss(x, parents))
        elbo = terms.pop("elbo")
        rest = terms["loss"] - elbo
        cf = self.counterfactual_loss(mech, x, parents, elbo=elbo)
        terms.update({k: v for k, v in cf.items() if k != "loss"})
        terms["loss"] = cf["loss"] + rest
        return terms

    def counterfactual_loss(
        self,
        mech: Mechanism,
        x: Tensor,
        parents: Mapping[str, Tensor],
        cf_parents: Mapping[str, Tensor] | None = None,
        elbo: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """{"loss", "cf_loss", "cf_<parent>", "elbo_gap", "lagrange"}. Counterfactual parents default to one
        parent, chosen at random, shuffled across the batch. Minimising "loss" with one optimiser descends in the
        model and ascends in lambda (its gradient sign is flipped here). In eval mode (validation) "loss" is
        weight * CF + lambda * max(gap, 0): a penalised objective comparable across epochs, so that checkpoint
        selection respects the bound."""
        if elbo is None:
            elbo = mech.loss(x, parents)["elbo"]
        if cf_parents is None:
            cf_parents = self.random_intervention(parents)
        cf = mech.predict(mech.abduct(x, parents), cf_parents)
        preds = (
            {p: f(cf) for p, f in self.predictors.items()}
            if isinstance(self.predictors, Mapping)
            else self.predictors(cf, cf_parents)
        )
        terms = {}
        for p, pred in preds.items():
            if p not in self.parent_kinds:
                raise KeyError(f"predictor for {p!r}, which is not a parent of {self.node!r}")
            if p in self.judged:
                terms[f"cf_{p}"] = self._attribute_loss(mech, p, pred, cf_parents[p])
        if not terms:
            raise ValueError(f"counterfactual fine-tuning of {self.node!r} got no predictors")
        cf_loss = sum(terms.values())
        if torch.isnan(self.elbo_bound):
            self.elbo_bound.fill_(float(elbo.detach()))
        gap = elbo - self.elbo_bound
        lam = self.lagrange
        # model: CF + lambda * gap (lambda held); lambda: gradient ascent on lambda * gap (gap held)
        lagrangian = lam.detach() * gap - lam * gap.detach() if self.training else lam.detach() * gap.clamp(min=0)
        loss = float(self.options.get("weight", 1.0)) * cf_loss + lagrangian
        out = {"loss": loss, "cf_loss": cf_loss.detach(), "elbo_gap": gap.detach(), "lagrange": lam.detach()}
        out.update({k: v.detach() for k, v in terms.items()})
        return out

    def random_intervention(self, parents: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Counterfactual parents: one parent, picked at random, permuted across the batch."""
        names = list(self.parent_kinds)
        if not names:
            raise ValueError(f"{self.node!r} has no parents to intervene on")
        out = dict(parents)
        p = names[int(torch.randint(len(names), ()))]
        out[p] = parents[p][torch.randperm(parents[p].shape[0], device=parents[p].device)]
        return out

    def _attribute_loss(self, mech: Mechanism, parent: str, pred: Tensor, target: Tensor) -> Tensor:
        kind = self.parent_kinds[parent].name
        target = target.to(pred.dtype)
        if kind == "binary":
            return F.binary_cross_entropy_with_logits(pred.reshape(target.shape), target)
        if kind == "categorical":
            return F.cross_entropy(pred, target.argmax(1))
        # continuous: squared error in the mechanism's units for the parent, so attributes weigh alike
        return (((pred.reshape(target.shape) - target) / mech.parent_scale(parent)) ** 2).mean()


def finetune_nodes(scm: SCM, nodes: list[str], specs: Mapping[str, Any]) -> list[str]:
    """The nodes among `nodes` that fine-tune; ConfigError for one that cannot or that starts untrained
    (no `init`, no `elbo_bound`: a bound taken from an untrained model's ELBO means nothing)."""
    out = []
    for node in nodes:
        mech = scm.mechanisms[node]
        if not finetunes(mech):
            continue
        key = f"mechanism.{node}.config.counterfactual_finetune"
        if not scm.graph.kinds[node].is_image or not mech.finetunable:
            raise ConfigError(f"{key}: only image mechanisms of families with an ELBO (vae, hvae) fine-tune")
        if not any(not scm.graph.kinds[p].is_image for p in mech.parents):
            raise ConfigError(f"{key}: {node!r} has no attribute parents to fine-tune for")
        if not specs[node].init and mech.counterfactual_finetune.get("elbo_bound") is None:
            raise ConfigError(
                f"{key} is enabled but {node!r} starts untrained: set init_from=<stage-1 run dir> "
                f"(or +mechanism.{node}.init=<unit ckpt>), or give counterfactual_finetune.elbo_bound"
            )
        out.append(node)
    return out


def finetune_objectives(
    cfg: DictConfig, scm: SCM, nodes: list[str]
) -> tuple[dict[str, CounterfactualObjective], dict[str, str]]:
    """The fine-tuning objective of each node in `nodes` (from `finetune_nodes`), holding predictors loaded
    (trained and cached when absent) for it. Returns ({node: objective}, {node: predictor file})."""
    from imcf.data.datamodule import build_dataset

    if not nodes:
        return {}, {}
    options = OmegaConf.to_container(cfg.dataset.options, resolve=True)
    pcfg = OmegaConf.merge(OmegaConf.structured(PredictorConfig), cfg.evaluate.predictors)
    pcfg.path = cfg.finetune_predictors.path
    if pcfg.path and not Path(pcfg.path).is_file():
        raise MissingFileError(f"finetune_predictors.path={pcfg.path}: no such file")
    fingerprint = dataset_fingerprint(build_dataset(cfg.dataset.name, cfg.dataset.root, "test", **options))
    files, objectives = {}, {}
    for node in nodes:
        mech, kind = scm.mechanisms[node], scm.graph.kinds[node]
        targets = {p: str(scm.graph.kinds[p]) for p in mech.parents if not scm.graph.kinds[p].is_image}
        model, quality, path = load_or_train_predictors(
            cfg.dataset.name,
            options,
            cfg.dataset.root,
            node,
            kind.shape,
            targets,
            pcfg,
            accelerator=cfg.evaluate.accelerator,
            seed=int(cfg.finetune_predictors.seed),
            progress=bool(cfg.evaluate.progress),
            fingerprint=fingerprint,
            setting="finetune_predictors",
        )
        poor = {t: q.reason for t, q in quality.items() if q.poor}
        if poor:
            print(f"[imcf] warning: fine-tuning {node!r} against poor predictors {poor} (test scores, {path})")
        objectives[node] = CounterfactualObjective(mech)
        objectives[node].set_predictors(FrozenPredictor(model))
        files[node] = path
        print(f"[imcf] counterfactual fine-tuning of {node!r} against the predictors in {path}")
    return objectives, files
