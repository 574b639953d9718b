"""Structural causal model: sampling, interventions and counterfactuals by abduction-action-prediction."""

from __future__ import annotations

import reprlib
import warnings
from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from imcf.graph import CausalGraph, NodeKind
from imcf.io import CheckpointError, MissingFileError, atomic_torch_save, atomic_write_yaml, read_yaml, safe_torch_load
from imcf.mechanisms.base import Mechanism
from imcf.mechanisms.component import ConfoundedComponent
from imcf.registry import MECHANISMS

Batch = dict[str, Tensor]


def unit_name(component: tuple[str, ...]) -> str:
    """File-system name of a training unit (a c-component): its nodes joined by '+'."""
    return "+".join(component)


#: how far an image value may lie outside [-1, 1] (float rounding of a counterfactual fed back as a factual)
IMAGE_TOLERANCE = 1e-3


class SCM(nn.Module):
    """A causal graph with one mechanism per node, and a shared-noise model per confounded c-component."""

    def __init__(
        self,
        graph: CausalGraph,
        mechanisms: Mapping[str, Mechanism],
        config: Mapping[str, Any] | None = None,
        components: Mapping[str, ConfoundedComponent] | None = None,
    ) -> None:
        super().__init__()
        missing = [n for n in graph.nodes if n not in mechanisms]
        if missing:
            raise KeyError(f"no mechanism for node(s) {missing}")
        extra = [n for n in mechanisms if n not in graph]
        if extra:
            raise KeyError(f"mechanisms given for node(s) not in the graph: {extra}")
        components = dict(components or {})
        confounded = {unit_name(c): c for c in graph.c_components() if len(c) > 1}
        absent = [name for name in confounded if name not in components]
        if absent:
            raise KeyError(
                f"c-component(s) {absent} have hidden confounders but no ConfoundedComponent; "
                "build the SCM with SCM.build or pass components={...}"
            )
        unknown = [c for c in components if c not in confounded]
        if unknown:
            raise KeyError(f"components {unknown} are not confounded c-components of the graph: {list(confounded)}")
        self._component_of = {n: name for name, comp in confounded.items() for n in comp}
        for n, m in mechanisms.items():
            expected = graph.parents(n)
            if n in self._component_of:
                expected = expected + tuple(components[self._component_of[n]].extras(n))
            if tuple(m.parents) != expected:
                raise ValueError(f"mechanism of {n!r} has parents {list(m.parents)}, expected {list(expected)}")
            if m.kind != graph.kinds[n]:
                raise ValueError(f"mechanism of {n!r} is for kind {m.kind}, graph says {graph.kinds[n]}")
        self.graph = graph
        self.mechanisms = nn.ModuleDict({n: mechanisms[n] for n in graph.nodes})
        self.components = nn.ModuleDict(components)
        self.config = dict(config or {})
        self.strict = False  # refuse counterfactual queries the graph cannot identify (identify.strict)
        self.verdicts: dict[tuple[str, ...], dict[str, Any]] = {}  # identifiability of every query answered

    # ----- helpers -----
    def _parents_of(self, node: str, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {p: values[p] for p in self.graph.parents(node)}

    def component(self, node: str) -> ConfoundedComponent | None:
        """The shared-noise model of `node`'s c-component, or None for an unconfounded node."""
        name = self._component_of.get(node)
        return self.components[name] if name is not None else None

    def _shared(self, node: str, factual: Mapping[str, Tensor], cache: dict[str, Any]) -> dict[str, Tensor]:
        """Shared confounder noise of `node`, abducted once per c-component from the factual."""
        comp = self.component(node)
        if comp is None:
            return {}
        if comp.name not in cache:
            cache[comp.name] = comp.abduct_shared(factual, self.mechanisms)
        return cache[comp.name][node]

    def _check_do(self, do: Mapping[str, Any]) -> None:
        if not isinstance(do, Mapping):
            raise TypeError(f"do must map node -> value, e.g. {{'x': 1.0}}; got {type(do).__name__}")
        unknown = [n for n in do if n not in self.graph]
        if unknown:
            raise KeyError(f"do() names unknown node(s) {unknown}; graph has {list(self.graph.nodes)}")

    def _do_value(self, node: str, value: Any, n: int) -> Tensor:
        """The intervention value as an (n, ...) tensor, refused outside the node's support (its mechanism's
        `support_bounds`): an impossible world, whatever the image mechanism would draw for it."""
        v = as_value(self.graph.kinds[node], value, n, self.device, node)
        self._check_support(node, v, f"do({node})")
        return v

    def _outside_support(self, node: str, v: Tensor) -> Tensor | None:
        """Which values of `v` lie outside the node's support (None when the support is unbounded)."""
        lo, hi = self.mechanisms[node].support_bounds()
        if lo is None and hi is None:
            return None
        outside = torch.zeros_like(v, dtype=torch.bool)
        if lo is not None:
            outside |= v < lo
        if hi is not None:
            outside |= v > hi
        return outside

    def _check_support(self, node: str, v: Tensor, what: str) -> None:
        """ValueError naming `what` and the node's support when a value of `v` lies outside it."""
        outside = self._outside_support(node, v)
        if outside is not None and bool(outside.any()):
            lo, hi = self.mechanisms[node].support_bounds()
            bounds = f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"
            row = int(outside.reshape(len(v), -1).any(1).nonzero()[0, 0])
            raise ValueError(
                f"{what}: {int(outside.sum())} value(s) outside the node's support {bounds} (e.g. row {row}: "
                f"{v[outside][0].item():g}); its mechanism's support is set by mechanism.{node}.config (support, "
                "lower, upper) or the dataset's node_config"
            )

    def _require(self, batch: Mapping[str, Tensor], nodes: Any, what: str) -> None:
        missing = sorted(n for n in nodes if n not in batch)
        if missing:
            raise KeyError(f"{what} needs node(s) {missing} in the batch; it has {sorted(batch)}")

    def _check_factual(self, factual: Mapping[str, Any], nodes: Any) -> int:
        """Check that the factual values of `nodes` are finite float tensors of their kind's shape, all with the
        same number of rows (returned); the errors name the node. One device sync for the finiteness test."""
        ordered = [n for n in self.graph.topological_order if n in nodes]
        dtype = torch.get_default_dtype()  # what sample() returns (flows use float64 inside)
        first = None
        for n in ordered:
            t, shape = factual[n], self.graph.kinds[n].tensor_shape
            if not isinstance(t, Tensor):
                raise TypeError(f"factual[{n!r}]: expected a tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"factual[{n!r}]: dtype {t.dtype} is not floating point (convert with .float())")
            if t.dtype != dtype:
                raise TypeError(
                    f"factual[{n!r}]: dtype {t.dtype}; the SCM's values are {dtype} (convert with .to({dtype}))"
                )
            if t.shape[1:] != shape or t.ndim != len(shape) + 1:
                expected = ", ".join(["B", *map(str, shape)])
                raise ValueError(
                    f"factual[{n!r}]: shape {tuple(t.shape)} does not fit a {self.graph.kinds[n]} node; "
                    f"expected ({expected})"
                )
            if first is None:
                first = n
            elif t.shape[0] != factual[first].shape[0]:
                raise ValueError(
                    f"factual[{n!r}] has {t.shape[0]} rows, factual[{first!r}] has {factual[first].shape[0]}: "
                    "every node needs one row per sample"
                )
        if first is not None and factual[first].shape[0] == 0:
            raise ValueError("factual: the batch has 0 rows; a query needs at least one sample")
        finite = torch.stack([torch.isfinite(factual[n]).all() for n in ordered])
        if not bool(finite.all()):
            n = ordered[int((~finite).nonzero()[0, 0])]
            bad = int((~torch.isfinite(factual[n])).sum())
            raise ValueError(f"factual[{n!r}]: {bad} NaN/inf value(s); a factual batch must be finite")
        # a value no factual world can hold: its abducted noise would be meaningless (or inf); one device sync
        outside = {n: self._outside_support(n, factual[n]) for n in ordered}
        bounded = [n for n in ordered if outside[n] is not None]
        if bounded and bool(torch.stack([outside[n].any() for n in bounded]).any()):
            for n in bounded:
                self._check_support(n, factual[n], f"factual[{n!r}]")
        for n in (n for n in ordered if self.graph.kinds[n].name in ("categorical", "binary")):
            row = first_non_class_row(factual[n])  # a soft or empty class reaches the children as no class at all
            if row is not None:
                what = "one-hot rows (a single 1, zeros elsewhere)" if factual[n].shape[1] > 1 else "values in {0, 1}"
                raise ValueError(
                    f"factual[{n!r}]: a {self.graph.kinds[n]} node takes {what}; row {row} is "
                    f"{[round(float(x), 4) for x in factual[n][row]]}"
                )
        images = [n for n in ordered if self.graph.kinds[n].name == "image"]
        if images:  # images are in [-1, 1]; a 0..255 batch would be answered as garbage
            ranges = torch.stack([torch.stack([factual[n].amin(), factual[n].amax()]) for n in images]).tolist()
            for n, (lo, hi) in zip(images, ranges, strict=True):
                if lo < -1 - IMAGE_TOLERANCE or hi > 1 + IMAGE_TOLERANCE:
                    raise ValueError(
                        f"factual[{n!r}]: values in [{lo:.4g}, {hi:.4g}]; image nodes take values in [-1, 1] "
                        "(8-bit pixels p: p / 127.5 - 1)"
                    )
        return int(factual[first].shape[0])

    @property
    def device(self) -> torch.device:
        return next(iter(self.mechanisms.values())).device

    def verdict(self, do: Mapping[str, Any] | tuple[str, ...], strict: bool = False) -> dict[str, Any]:
        """Identifiability of the counterfactual query do(...) on this graph, and what it rests on (cached)."""
        from imcf.identify import counterfactual_verdict

        key = tuple(sorted(do))
        if key not in self.verdicts:
            families = {n: m.family_name() for n, m in self.mechanisms.items()}
            self.verdicts[key] = counterfactual_verdict(self.graph, key, families)
            if self.verdicts[key].get("warning"):
                warnings.warn(f"do({', '.join(key)}): {self.verdicts[key]['warning']}", stacklevel=3)
        if strict and self.verdicts[key]["status"] == "not_identified":
            counterfactual_verdict(self.graph, key, strict=True)  # raises, naming the confounding path
        return self.verdicts[key]

    # ----- the three rungs -----
    @torch.no_grad()
    def sample(self, n: int) -> Batch:
        """Draw `n` joint samples from the observational distribution."""
        return self.intervene({}, n)

    @torch.no_grad()
    def intervene(self, do: Mapping[str, Any], n: int) -> Batch:
        """Draw `n` samples from the interventional distribution P(V | do(...))."""
        self._check_do(do)
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
            raise ValueError(f"intervene: n is the number of samples, a positive integer; got {n!r}")
        shared = {name: comp.sample_shared(n, self.mechanisms) for name, comp in self.components.items()}
        out: Batch = {}
        for node in self.graph.topological_order:
            if node in do:
                out[node] = self._do_value(node, do[node], n)
                continue
            mech, name = self.mechanisms[node], self._component_of.get(node)
            extras, own = (shared[name][0][node], shared[name][1]) if name else ({}, {})
            noise = own[node] if node in own else mech.sample_noise(n)
            out[node] = mech.predict(noise, {**self._parents_of(node, out), **extras})
        return out

    @torch.no_grad()
    def abduct(self, factual: Mapping[str, Tensor]) -> dict[str, Any]:
        """Exogenous noise of every node given a full factual batch."""
        _check_mapping(factual)
        self._require(factual, self.graph.nodes, "abduction")
        self._check_factual(factual, self.graph.nodes)
        cache: dict[str, Any] = {}
        out = {}
        for n in self.graph.topological_order:
            parents = {**self._parents_of(n, factual), **self._shared(n, factual, cache)}
            out[n] = self.mechanisms[n].abduct(factual[n], parents)
        return out

    @torch.no_grad()
    def counterfactual(self, factual: Mapping[str, Tensor], do: Mapping[str, Any]) -> Batch:
        """Counterfactual batch: intervened nodes set, non-descendants copied, descendants re-predicted.

        `do` maps node -> value: a Python number, a tensor of one sample's shape, or one value per sample.
        The query's identifiability verdict is recorded in `self.verdicts` (a warning when the graph cannot
        identify it; an error instead when `self.strict`).
        """
        _check_mapping(factual)
        self._check_do(do)
        if do:
            self.verdict(do, strict=self.strict)
        affected = self.graph.descendants(do.keys()) - set(do)
        needed = {n for n in self.graph.nodes if n not in do and n not in affected}
        for n in affected:  # factual parents; a confounded node also needs its whole c-component
            comp = self.component(n)
            for m in comp.nodes if comp is not None else (n,):
                needed |= {m, *self.graph.parents(m)}
        self._require(factual, needed, "this counterfactual query")
        b = self._check_factual(factual, needed) if needed else _batch_size_from_do(do)
        out: Batch = {}
        shared: dict[str, Any] = {}  # confounder noise, abducted once per c-component
        for node in self.graph.topological_order:
            if node in do:  # action
                out[node] = self._do_value(node, do[node], b)
            elif node not in affected:  # not downstream of any intervention: unchanged
                out[node] = factual[node]
            else:  # abduction under factual parents, prediction under counterfactual parents
                mech = self.mechanisms[node]
                extras = self._shared(node, factual, shared)
                noise = mech.abduct(factual[node], {**self._parents_of(node, factual), **extras})
                out[node] = mech.predict(noise, {**self._parents_of(node, out), **extras})
        if "_index" in factual:
            out["_index"] = factual["_index"]
        return out

    # ----- persistence -----
    def save(self, directory: str | Path, config: Mapping[str, Any] | None = None) -> Path:
        """Write graph.yaml, mechanisms.yaml, config.yaml and one checkpoint per c-component."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(directory / "graph.yaml", self.graph.to_dict())
        atomic_write_yaml(directory / "mechanisms.yaml", self.mechanism_specs())
        atomic_write_yaml(directory / "config.yaml", dict(config if config is not None else self.config))
        for comp in self.graph.c_components():
            self.save_unit(directory, comp)
        return directory

    def mechanism_specs(self) -> dict[str, Any]:
        """Family name and constructor arguments of every node's mechanism (+ `_components`: confounder models)."""
        specs: dict[str, Any] = {
            n: {"family": type(m).registry_name, "config": _plain(m.config)} for n, m in self.mechanisms.items()
        }
        if len(self.components):
            specs["_components"] = {name: _plain(c.config) for name, c in self.components.items()}
        return specs

    def save_unit(self, directory: str | Path, component: tuple[str, ...]) -> Path:
        """Atomically write the weights of one c-component (mechanisms + shared-noise model) to `<unit>.ckpt`."""
        name = unit_name(component)
        ckpt: dict[str, Any] = {
            "nodes": list(component),
            "state_dict": {n: self.mechanisms[n].state_dict() for n in component},
            "meta": {n: self._unit_meta(n) for n in component},  # what load_unit checks against the graph
        }
        if name in self.components:
            ckpt["component"] = self.components[name].state_dict()
            ckpt["component_config"] = _plain(self.components[name].config)
        return atomic_torch_save(ckpt, Path(directory) / f"{name}.ckpt")

    @classmethod
    def build(cls, graph: CausalGraph, specs: Mapping[str, Any]) -> SCM:
        """Construct fresh mechanisms from {node: {family, config}}.

        Optional key `_components`: {unit name or "*": ConfoundedComponent kwargs} for confounded c-components.
        """
        import imcf.mechanisms  # noqa: F401  (fills the registry)

        comp_cfg = dict(specs.get("_components") or {})
        components = {
            unit_name(c): ConfoundedComponent(graph, c, **dict(comp_cfg.get(unit_name(c), comp_cfg.get("*", {}))))
            for c in graph.c_components()
            if len(c) > 1
        }
        member_of = {n: comp for comp in components.values() for n in comp.nodes}
        mechs = {}
        for n in graph.nodes:
            if n not in specs:
                raise KeyError(f"no mechanism specified for node {n!r}")
            extra = member_of[n].extras(n) if n in member_of else None
            family, config = specs[n]["family"], dict(specs[n].get("config") or {})
            try:  # the registry's own error names the known families; add the node
                family_cls = MECHANISMS[family]
            except KeyError as e:
                raise KeyError(f"mechanism.{n}.family: {e.args[0]}") from None
            try:
                mechs[n] = family_cls.from_graph(graph, n, extra, **config)
            except TypeError as e:  # an option the family does not take: name the node and the family
                raise TypeError(f"mechanism.{n}.config ({family}): {e}") from None
        return cls(graph, mechs, components=components)

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> SCM:
        """Rebuild an SCM saved by `save` (or by training) from its directory, in eval mode; weights load safely."""
        directory = Path(directory)
        if not directory.is_dir():
            raise MissingFileError(f"SCM directory not found: {directory}")
        graph = CausalGraph.from_dict(read_yaml(directory / "graph.yaml"))
        scm = cls.build(graph, read_yaml(directory / "mechanisms.yaml"))
        cfg = directory / "config.yaml"
        scm.config = (read_yaml(cfg) or {}) if cfg.is_file() else {}
        for comp in graph.c_components():
            name = unit_name(comp)
            path = directory / f"{name}.ckpt"
            if not path.is_file():
                raise MissingFileError(f"checkpoint for unit {name!r} missing: {path} (was the unit trained?)")
            scm.load_unit(path, comp, recover=_retrain_hint(directory, name))
        return scm.to(map_location).eval()

    def load_unit(self, path: str | Path, component: tuple[str, ...] | None = None, recover: str = "") -> None:
        """Load one unit checkpoint written by `save_unit`, after checking that it belongs to this graph.

        `component` is the unit the file should hold (default: the unit of its first node); `recover` says how
        to get a good file back when this one cannot be read. A mismatch raises `CheckpointError` naming the
        file, the node and what differs.
        """
        path = Path(path)
        ckpt = safe_torch_load(path, recover=recover or "retrain the unit it holds (python train.py units=[...])")
        if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping) or "nodes" not in ckpt:
            keys = sorted(ckpt) if isinstance(ckpt, Mapping) else type(ckpt).__name__
            raise CheckpointError(f"{path} is not a unit checkpoint (written by SCM.save_unit); it holds {keys}")
        nodes = [str(n) for n in ckpt["nodes"]]
        stray = [n for n in nodes if n not in self.graph]
        if stray:
            raise CheckpointError(f"{path} holds node(s) {stray}, which are not in the graph {list(self.graph.nodes)}")
        if component is None:
            component = self.graph.c_component_of(nodes[0]) if nodes else ()
        expected = list(component)
        if nodes != expected or sorted(ckpt["state_dict"]) != sorted(nodes):
            raise CheckpointError(f"{path} holds unit {nodes}, expected {expected}; was it copied from another run?")
        problems = [f"node {n!r}: {d}" for n in nodes for d in self.checkpoint_differences(n, ckpt)]
        name = unit_name(tuple(nodes))
        if name in self.components:
            comp = self.components[name]
            if "component" not in ckpt:
                problems.append(f"unit {name!r}: no shared-noise model (the unit was not confounded when trained)")
            else:
                saved = ckpt.get("component_config", _plain(comp.config))
                if saved != _plain(comp.config):
                    problems.append(f"confounder config {saved} in the checkpoint, {_plain(comp.config)} in the run")
                problems += [f"confounder {d}" for d in _shape_differences(ckpt["component"], comp.state_dict())]
        elif "component" in ckpt:
            problems.append(f"unit {name!r}: has a shared-noise model, but the graph has no confounder here")
        if problems:
            raise CheckpointError(
                f"checkpoint {path} does not belong to this model: " + "; ".join(problems) + ". Load it with the run"
                " it was trained in, or retrain the unit for this graph"
            )
        for n in nodes:
            self.mechanisms[n].load_state_dict(ckpt["state_dict"][n])
        if name in self.components:
            self.components[name].load_state_dict(ckpt["component"])

    def _unit_meta(self, node: str) -> dict[str, Any]:
        """What a unit checkpoint records about `node`: its parents, kind, mechanism family and arguments."""
        mech = self.mechanisms[node]
        return {
            "parents": list(self.graph.parents(node)),
            "kind": str(self.graph.kinds[node]),
            "family": type(mech).registry_name,
            "config": _plain(mech.config),
        }

    def set_inference_options(self, node: str, options: Mapping[str, Any]) -> None:
        """Answer queries on `node` under other `inference_options` of its family (e.g. a DDIM's guidance_scale, a
        VAE's abduction): the mechanism is rebuilt with them and keeps its weights; a dict value (abduction) updates
        the one it replaces key by key, at every depth (`{"abduction": {"fit": {"steps": 5}}}` keeps fit's rate).
        Keys the family does not list are refused, naming them: they would change what the weights mean."""
        if node not in self.mechanisms:
            raise KeyError(f"inference options for {node!r}: no such node; nodes: {list(self.graph.nodes)}")
        mech = self.mechanisms[node]
        family = type(mech)
        bad = sorted(set(options) - set(family.inference_options))
        if bad:
            raise KeyError(
                f"inference options for {node!r}: {bad} are not inference options of {family.registry_name!r}; "
                f"it has {list(family.inference_options) or 'none'}"
            )
        config = _merged(dict(mech.config), options)
        new = family(node, mech.kind, mech.parent_kinds, **config)
        new.config = config
        new.load_state_dict(mech.state_dict())
        self.mechanisms[node] = new.to(mech.device).train(mech.training)

    def checkpoint_differences(
        self, node: str, ckpt: Mapping[str, Any], fields: tuple[str, ...] = ("parents", "kind", "family", "config")
    ) -> list[str]:
        """How a unit checkpoint's record of `node` (its `fields`, then its weights' shapes) differs from this SCM,
        in words; empty when it fits. Fields an older checkpoint lacks are not compared, nor the config keys the
        family lists in `inference_options` (e.g. abduction settings), which may change after training."""
        saved, here = (ckpt.get("meta") or {}).get(node) or {}, self._unit_meta(node)
        free = set(type(self.mechanisms[node]).inference_options)  # how to answer queries, not what weights mean
        if free and isinstance(saved.get("config"), Mapping):
            saved = {**saved, "config": {k: v for k, v in saved["config"].items() if k not in free}}
            here = {**here, "config": {k: v for k, v in here["config"].items() if k not in free}}
        out = [
            f"{key} {saved[key]!r} in the checkpoint, {here[key]!r} in the "
            + ("graph" if key in ("parents", "kind") else "mechanism config")
            for key in fields
            if key in saved and saved[key] != here[key]
        ]
        if out:  # the weights would not mean the same thing; their shapes are beside the point
            return out
        mech = self.mechanisms[node]
        saved_state = {k: v for k, v in ckpt["state_dict"][node].items() if k not in mech.retired_state}
        return _shape_differences(saved_state, mech.state_dict())


def _merged(old: Any, new: Any) -> Any:
    """`new` over `old`, mappings merged key by key at every depth (other values replaced)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return {**old, **{k: _merged(old.get(k), v) for k, v in new.items()}}
    return new


def _check_mapping(factual: Any) -> None:
    if not isinstance(factual, Mapping):
        raise TypeError(f"factual must map node -> tensor (a batch dict); got {type(factual).__name__}")


def first_non_class_row(values: Tensor) -> int | None:
    """The first row of (B, K) class values that is not a class: for K > 1 not one-hot (a single 1, zeros
    elsewhere), for K = 1 (binary) not 0 or 1; None when every row is one."""
    ok = ((values == 0) | (values == 1)).all(1)
    if values.shape[1] > 1:
        ok = ok & (values.sum(1) == 1)
    return None if bool(ok.all()) else int((~ok).nonzero()[0, 0])


def as_value(kind: NodeKind, value: Any, n: int, device: torch.device, node: str = "?") -> Tensor:
    """Normalise an intervention value to a (n, *kind.tensor_shape) float tensor.

    Accepts a number (categorical: a class index), a tensor of one sample's shape, or one per sample
    (for continuous/binary nodes a (n,) vector also works; for categorical, (n,) class indices).
    """
    shape = kind.tensor_shape
    if isinstance(value, (str, bytes)) or value is None:  # torch would read bytes as numbers, a str not at all
        raise TypeError(f"do({node}): {reprlib.repr(value)} is not numeric (give a number, numbers or a tensor)")
    try:
        v = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"do({node}): {reprlib.repr(value)} is not numeric ({e})") from None
    if v.is_complex():
        raise TypeError(f"do({node}): complex values are not allowed")
    if v.is_floating_point() and not bool(torch.isfinite(v).all()):
        bad = int((~torch.isfinite(v)).sum())
        raise ValueError(f"do({node}): {bad} NaN/inf value(s); an intervention value must be finite")
    if kind.name == "categorical" and torch.is_floating_point(v) and v.ndim == 0:  # do(digit=3.0): an index
        if float(v) != round(float(v)):
            raise ValueError(
                f"do({node}): a categorical node takes a class index (an integer in [0, {kind.num_classes})) or "
                f"one-hot rows; got {value!r}"
            )
        v = v.long()
    if kind.name == "categorical" and not torch.is_floating_point(v):
        k = int(kind.num_classes)
        if v.ndim == 2 and v.shape[1] == 1 and k != 1:  # (n, 1) class indices, as a dataset's label column
            v = v.reshape(-1)
        if v.ndim > 1 or (v.numel() and (v.min() < 0 or v.max() >= k)):
            raise ValueError(f"do({node}): class indices must lie in [0, {k}), got {value!r}")
        v = nn.functional.one_hot(v.long().reshape(-1), k).float()
        v = v.expand(n, k) if v.shape[0] == 1 else v
    v = v.float()
    if kind.name in ("continuous", "binary") and v.ndim <= 1 and v.numel() in (1, n):
        v = v.reshape(-1, 1)
    if tuple(v.shape) == shape:
        v = v.unsqueeze(0)
    if v.ndim == len(shape) + 1 and tuple(v.shape[1:]) == shape and v.shape[0] == 1:
        v = v.expand(n, *shape)
    if tuple(v.shape) != (n, *shape):
        raise ValueError(
            f"do({node}): value of shape {tuple(torch.as_tensor(value).shape)} does not fit "
            f"{n} samples of kind {kind} (expected {(n, *shape)} or one sample's shape)"
        )
    if kind.name == "binary" and not torch.all((v == 0) | (v == 1)):
        raise ValueError(f"do({node}): binary node takes values in {{0, 1}}")
    if kind.name == "categorical":
        row = first_non_class_row(v)
        if row is not None:
            raise ValueError(
                f"do({node}): a categorical value is a class index or a one-hot row (a single 1, zeros elsewhere); "
                f"row {row} is {[round(float(x), 4) for x in v[row]]}"
            )
    return v.clone()


def _shape_differences(saved: Mapping[str, Any], here: Mapping[str, Tensor], limit: int = 3) -> list[str]:
    """Parameters missing, unexpected or of another shape in a saved state dict, in words (at most `limit`)."""
    out = [f"{k} missing from the checkpoint" for k in here if k not in saved]
    out += [f"{k} in the checkpoint is not a parameter here" for k in saved if k not in here]
    out += [
        f"{k}: shape {tuple(v.shape)} in the checkpoint, {tuple(here[k].shape)} here"
        for k, v in saved.items()
        if k in here and isinstance(v, Tensor) and v.shape != here[k].shape
    ]
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])


def _retrain_hint(directory: Path, unit: str) -> str:
    """How to get a unit checkpoint of a run back: train the unit again (resuming when Lightning's checkpoint
    is there, which for a finished unit only re-exports its best weights)."""
    hint = f"retrain unit {unit!r}: python train.py --config-dir {directory} --config-name config units=[{unit}]"
    last = directory / "checkpoints" / unit / "last.ckpt"
    if last.is_file():
        hint += f" (it resumes from {last}; a finished unit is re-exported from its best checkpoint, not retrained)"
    return hint


def _batch_size_from_do(do: Mapping[str, Any]) -> int:
    for v in do.values():
        if isinstance(v, Tensor) or (isinstance(v, Sequence) and not isinstance(v, (str, bytes))):
            return len(v) if not isinstance(v, Tensor) or v.ndim else 1  # as_value names bad values
    return 1


def _plain(obj: Any) -> Any:
    """Convert configs (possibly OmegaConf) to plain YAML-safe data."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):  # lists, tuples, OmegaConf ListConfig
        return [_plain(v) for v in obj]
    if hasattr(obj, "items"):
        return _plain(dict(obj.items()))
    return obj
