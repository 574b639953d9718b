"""Which mechanism each node gets: the `mechanism` config (groups by kind, per-node overrides) composed with
what the dataset implies (`image_gain`, `node_config`) and checked against the registered families."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import imcf.mechanisms  # noqa: F401  (fills the registry)
from imcf.config import KIND_GROUP, ConfigError, MechanismSpec
from imcf.graph import CausalGraph
from imcf.registry import MECHANISMS


def _models_gain(family: Any) -> bool:
    return isinstance(family, str) and family in MECHANISMS and MECHANISMS[family].models_gain


def _family_takes(family: Any, key: str) -> bool:
    """Whether a registered family's constructor takes the config key `key` (or any key)."""
    if not isinstance(family, str) or family not in MECHANISMS:
        return False
    params = inspect.signature(MECHANISMS[family].__init__).parameters
    return key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def mechanism_specs(
    graph: CausalGraph,
    mechanism_cfg: Any,
    image_gain: Sequence[str] = (),
    node_config: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, MechanismSpec]:
    """Pick each node's mechanism: `mechanism.<node>` if given, else the group of its kind.

    Groups: `attribute` (continuous), `discrete` (binary, categorical), `image` (image). The key `confounder`
    configures the shared-noise model of confounded c-components (imcf.mechanisms.component).
    `image_gain` (the dataset's): an image node whose family models a gain (`models_gain`) and whose config
    sets no `gain_parents` gets those of these attributes that are its parents. `node_config` (the dataset's):
    config the data imply for a node (e.g. a positive support, parent ranges), put under the node's own config,
    key by key where its family takes the key; nodes the graph lacks are skipped (a dataset may offer more
    attributes than a graph uses).
    """
    raw = (
        OmegaConf.to_container(mechanism_cfg, resolve=True)
        if isinstance(mechanism_cfg, DictConfig)
        else dict(mechanism_cfg or {})
    )
    groups = set(KIND_GROUP.values())
    unknown = [k for k in raw if k not in groups and k not in graph and k != "confounder"]
    if unknown:
        raise ConfigError(f"mechanism.{unknown[0]}: not a node of graph {graph.name!r} nor a group {sorted(groups)}")
    stray = [a for a in image_gain if a not in graph and a not in (node_config or {})]
    if stray:
        raise ConfigError(
            f"dataset.image_gain: {stray} is neither a node of graph {graph.name!r} {list(graph.nodes)} nor an "
            f"attribute the dataset describes (dataset.node_config: {sorted(node_config or {})})"
        )
    out = {}
    for node in graph.nodes:
        group = KIND_GROUP[graph.kinds[node].name]
        base = dict(raw.get(group) or {})
        override = dict(raw.get(node) or {}) if node != group else {}  # a node named like its group: one entry
        spec = {**base, **override}
        if "family" not in spec:
            raise ConfigError(
                f"no mechanism for node {node!r} (kind {graph.kinds[node]}): set mechanism/{group}=<family> "
                f"or mechanism.{node}.family"
            )
        # config: the group's (when the node keeps its family), then what the data imply, then the node's own
        same_family = override.get("family", base.get("family")) == base.get("family")
        implied = dict((node_config or {}).get(node) or {})
        config = dict((base.get("config") or {}) if same_family else {})
        if isinstance(implied.get("parent_ranges"), dict):  # the data's ranges, of the parents this graph gives
            implied["parent_ranges"] = {p: r for p, r in implied["parent_ranges"].items() if p in graph.parents(node)}
        for k, v in implied.items():
            if _family_takes(spec["family"], k):  # a mapping (parent_ranges) keeps the entries already set
                config[k] = {**v, **config[k]} if isinstance(v, dict) and isinstance(config.get(k), dict) else v
        config.update(override.get("config") or {})
        if config or "config" in spec:
            spec["config"] = config
        gains = [a for a in image_gain if a in graph.parents(node)]
        if gains and _models_gain(spec["family"]) and "gain_parents" not in (spec.get("config") or {}):
            spec["config"] = {**(spec.get("config") or {}), "gain_parents": gains}
        try:
            out[node] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MechanismSpec), spec))
        except OmegaConfBaseException as e:
            raise ConfigError(f"mechanism.{node}: {e}") from None
    return out
