"""Counterfactual fine-tuning in `train.py`: give image mechanisms that enable it their anti-causal predictors.

A mechanism with `counterfactual_finetune.enabled: true` (the latent-image families) trains on the constrained
objective of Ribeiro et al. 2023 once it holds predictors. They are the evaluator's predictors
(`imcf.evaluators.predictors`: same architecture, epochs and data as `evaluate.predictors`) trained with another
seed (`finetune_predictors.seed`), cached under the data root, so effectiveness is scored afterwards by a
classifier the model was not tuned against. The mechanism starts from a trained run (`init_from=<run>` or
`+mechanism.image.init=<run>/image.ckpt`): see docs/training.md, "Counterfactual fine-tuning".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imcf.config import ConfigError, PredictorConfig
from imcf.evaluators.cache import dataset_fingerprint
from imcf.evaluators.predictors import FrozenPredictor, load_or_train_predictors
from imcf.mechanisms.latent_image import finetunes
from imcf.scm import SCM


def finetune_nodes(scm: SCM, nodes: list[str], specs: Mapping[str, Any]) -> list[str]:
    """The nodes among `nodes` that fine-tune; ConfigError for one that cannot or that starts untrained
    (no `init`, no `elbo_bound`: a bound taken from an untrained model's ELBO means nothing)."""
    out = []
    for node in nodes:
        mech = scm.mechanisms[node]
        if not finetunes(mech):
            continue
        key = f"mechanism.{node}.config.counterfactual_finetune"
        if not scm.graph.kinds[node].is_image or not hasattr(mech, "set_predictors"):
            raise ConfigError(f"{key}: only image mechanisms of the latent families (vae, hvae) fine-tune")
        if not any(not scm.graph.kinds[p].is_image for p in mech.parents):
            raise ConfigError(f"{key}: {node!r} has no attribute parents to fine-tune for")
        if not specs[node].init and mech.finetune.get("elbo_bound") is None:
            raise ConfigError(
                f"{key} is enabled but {node!r} starts untrained: set init_from=<stage-1 run dir> "
                f"(or +mechanism.{node}.init=<unit ckpt>), or give counterfactual_finetune.elbo_bound"
            )
        out.append(node)
    return out


def attach_finetune_predictors(cfg: DictConfig, scm: SCM, nodes: list[str]) -> dict[str, str]:
    """Load (training and caching when absent) predictors for each node in `nodes` (from `finetune_nodes`) and
    hand them to its mechanism. Returns {node: predictor file}."""
    from imcf.data.datamodule import build_dataset

    if not nodes:
        return {}
    options = OmegaConf.to_container(cfg.dataset.options, resolve=True)
    pcfg = OmegaConf.merge(OmegaConf.structured(PredictorConfig), cfg.evaluate.predictors)
    pcfg.path = cfg.finetune_predictors.path
    if pcfg.path and not Path(pcfg.path).is_file():
        raise FileNotFoundError(f"finetune_predictors.path={pcfg.path}: no such file")
    fingerprint = dataset_fingerprint(build_dataset(cfg.dataset.name, cfg.dataset.root, "test", **options))
    files = {}
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
        )
        poor = {t: q.reason for t, q in quality.items() if q.poor}
        if poor:
            print(f"[imcf] warning: fine-tuning {node!r} against poor predictors {poor} (test scores, {path})")
        mech.set_predictors(FrozenPredictor(model))
        files[node] = path
        print(f"[imcf] counterfactual fine-tuning of {node!r} against the predictors in {path}")
    return files
