"""Causal graphs over attributes and images: directed edges, bidirected (confounded) edges, c-components."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

KINDS = ("continuous", "binary", "categorical", "image")
_RESERVED_KEYS = {"confounded", "name", "allow_image_children", "nodes"}


class GraphError(ValueError):
    """A causal graph is malformed; the message names the culprit."""


@dataclass(frozen=True)
class NodeKind:
    """What a node holds: a continuous scalar, a binary flag, one of K categories, or a C x H x W image."""

    name: str
    num_classes: int | None = None
    shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.name not in KINDS:
            raise GraphError(f"unknown node kind {self.name!r}; expected one of {KINDS}")
        if self.name == "categorical" and (self.num_classes is None or self.num_classes < 2):
            raise GraphError("categorical kind needs num_classes >= 2")
        if self.name == "image" and (self.shape is None or len(self.shape) != 3):
            raise GraphError("image kind needs shape (C, H, W)")
        for d in self.shape or ():
            _positive_int(d, f"image shape {list(self.shape)}")  # type: ignore[arg-type]

    @property
    def is_image(self) -> bool:
        return self.name == "image"

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        """Per-sample tensor shape in a batch: (1,), (1,), (K,) or (C, H, W)."""
        if self.name == "categorical":
            return (int(self.num_classes),)
        if self.name == "image":
            return tuple(self.shape)  # type: ignore[arg-type]
        return (1,)

    @property
    def dim(self) -> int:
        """Number of features when flattened."""
        out = 1
        for s in self.tensor_shape:
            out *= s
        return out

    def __str__(self) -> str:
        if self.name == "categorical":
            return f"categorical({self.num_classes})"
        if self.name == "image":
            return "image({},{},{})".format(*self.shape)  # type: ignore[misc]
        return self.name

    @classmethod
    def parse(cls, spec: Any, node: str = "?") -> NodeKind:
        """Parse `continuous`, `binary`, `categorical(10)`, `image(1,32,32)` or a dict."""
        if isinstance(spec, NodeKind):
            return spec
        num_classes = shape = None
        if isinstance(spec, Mapping):
            if "kind" not in spec:
                raise GraphError(f"node {node!r}: missing 'kind'")
            num_classes = spec.get("num_classes")
            shape = spec.get("shape")
            spec = spec["kind"]
        if not isinstance(spec, str):
            raise GraphError(f"node {node!r}: kind must be a string, got {spec!r}")
        m = re.fullmatch(r"\s*(\w+)\s*(?:\(([^)]*)\))?\s*", spec)
        if m is None:
            raise GraphError(f"node {node!r}: cannot parse kind {spec!r}")
        name, args = m.group(1), m.group(2)
        try:
            if args:  # `categorical(10)`, `image(1,32,32)`: the dimensions are text
                values = [_positive_int(a.strip(), spec.strip()) for a in args.split(",") if a.strip()]
                if name == "categorical":
                    num_classes = values[0]
                elif name == "image":
                    shape = values
            elif num_classes is not None:
                num_classes = _positive_int(num_classes, f"num_classes {num_classes!r}")
            if shape is not None and (isinstance(shape, str) or not isinstance(shape, Sequence)):
                raise GraphError(f"image shape {shape!r} must be a list [C, H, W]")
            return cls(name, num_classes, tuple(shape) if shape is not None else None)
        except GraphError as e:
            raise GraphError(f"node {node!r}: {e}") from None


class CausalGraph:
    """A causal graph: nodes with kinds, directed edges (parents), bidirected edges (hidden confounders)."""

    def __init__(
        self,
        nodes: Mapping[str, Any],
        parents: Mapping[str, Iterable[str]] | None = None,
        confounded: Iterable[Iterable[str]] = (),
        allow_image_children: bool = False,
        name: str = "graph",
    ) -> None:
        self.name = name
        self.allow_image_children = allow_image_children
        self.kinds: dict[str, NodeKind] = {}
        for node, spec in nodes.items():
            if not isinstance(node, str) or not node or node.startswith("_"):
                raise GraphError(f"invalid node name {node!r} (non-empty, must not start with '_')")
            self.kinds[node] = NodeKind.parse(spec, node)
        parents = dict(parents or {})
        for node in parents:
            if node not in self.kinds:
                raise GraphError(f"parents given for unknown node {node!r}")
        self._parents: dict[str, tuple[str, ...]] = {}
        for node in self.kinds:
            pa = parents.get(node, ()) or ()
            if isinstance(pa, str) or not isinstance(pa, Iterable):  # a string would split into characters
                raise GraphError(f"node {node!r}: parents must be a list of node names, got {pa!r}")
            pa = tuple(pa)
            for p in pa:
                if p == node:
                    raise GraphError(f"self-loop: node {node!r} lists itself as a parent")
                if p not in self.kinds:
                    raise GraphError(f"node {node!r} has unknown parent {p!r}")
            if len(set(pa)) != len(pa):
                raise GraphError(f"node {node!r} lists a parent twice: {list(pa)}")
            self._parents[node] = pa
        self.confounded: list[tuple[str, str]] = []
        if isinstance(confounded, str | Mapping):
            raise GraphError(f"confounded must be a list of [a, b] pairs, got {confounded!r}")
        for pair in confounded:
            if isinstance(pair, str) or not isinstance(pair, Iterable) or isinstance(pair, Mapping):
                raise GraphError(f"confounded: each bidirected edge is a pair [a, b] of node names, got {pair!r}")
            pair = tuple(pair)
            if len(pair) != 2 or not all(isinstance(n, str) for n in pair):
                raise GraphError(f"bidirected edge must join two nodes, got {list(pair)}")
            a, b = pair
            for n in (a, b):
                if n not in self.kinds:
                    raise GraphError(f"bidirected edge {a!r} <-> {b!r} names unknown node {n!r}")
            if a == b:
                raise GraphError(f"bidirected self-loop on {a!r}")
            if (a, b) not in self.confounded and (b, a) not in self.confounded:
                self.confounded.append((a, b))
        self._dag = nx.DiGraph()
        self._dag.add_nodes_from(self.kinds)
        self._dag.add_edges_from((p, n) for n, pa in self._parents.items() for p in pa)
        if not nx.is_directed_acyclic_graph(self._dag):  # find_cycle only to name it: it is slow
            cycle = nx.find_cycle(self._dag)
            path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            raise GraphError(f"the directed edges contain a cycle: {path}")
        order = {n: i for i, n in enumerate(self.kinds)}
        self._topo = tuple(nx.lexicographical_topological_sort(self._dag, key=lambda n: order[n]))
        if not allow_image_children:
            for n, kind in self.kinds.items():
                if kind.is_image and self.children(n):
                    raise GraphError(
                        f"image node {n!r} has children {list(self.children(n))}; "
                        "set allow_image_children: true to permit it"
                    )

    # ----- construction -----
    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> CausalGraph:
        """Build from `{node: {kind, parents}, confounded: [[a, b]]}` or the same under a `nodes:` key."""
        if not isinstance(spec, Mapping):
            raise GraphError(f"graph spec must be a mapping, got {type(spec).__name__}")
        if "nodes" in spec:
            unknown = sorted(set(spec) - _RESERVED_KEYS)
            if unknown:
                raise GraphError(f"graph spec: unknown key(s) {unknown}; known: {sorted(_RESERVED_KEYS)}")
            node_specs = spec["nodes"]
            if node_specs is not None and not isinstance(node_specs, Mapping):
                raise GraphError(f"graph spec: nodes must be a mapping of node name to spec, got {node_specs!r}")
        else:
            node_specs = {k: v for k, v in spec.items() if k not in _RESERVED_KEYS}
        image_children = spec.get("allow_image_children", False)
        if not isinstance(image_children, bool):
            raise GraphError(f"graph spec: allow_image_children must be true or false, got {image_children!r}")
        if not node_specs:
            raise GraphError("graph has no nodes")
        nodes, parents = {}, {}
        for node, ns in node_specs.items():
            if isinstance(ns, str):
                ns = {"kind": ns}
            if not isinstance(ns, Mapping):
                raise GraphError(f"node {node!r}: expected a mapping with 'kind', got {ns!r}")
            unknown = set(ns) - {"kind", "parents", "num_classes", "shape"}
            if unknown:
                raise GraphError(f"node {node!r}: unknown keys {sorted(unknown)}")
            nodes[node] = NodeKind.parse(ns, node)
            parents[node] = ns.get("parents") or []
        return cls(
            nodes,
            parents,
            confounded=spec.get("confounded") or [],
            allow_image_children=image_children,
            name=str(spec.get("name", "graph")),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> CausalGraph:
        """Load from a YAML file; duplicate node keys are an error."""
        path = Path(path)
        if not path.is_file():
            raise GraphError(f"graph file not found: {path}")
        return cls.from_dict(_load_yaml_no_duplicates(path.read_text(), str(path)))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form that `from_dict` reads back."""
        nodes = {}
        for n, k in self.kinds.items():
            d: dict[str, Any] = {"kind": k.name}
            if k.num_classes is not None:
                d["num_classes"] = k.num_classes
            if k.shape is not None:
                d["shape"] = list(k.shape)
            d["parents"] = list(self._parents[n])
            nodes[n] = d
        return {
            "name": self.name,
            "nodes": nodes,
            "confounded": [list(p) for p in self.confounded],
            "allow_image_children": self.allow_image_children,
        }

    def to_yaml(self, path: str | Path) -> None:
        """Write the graph as YAML."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # ----- queries -----
    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self.kinds)

    @property
    def topological_order(self) -> tuple[str, ...]:
        return self._topo

    def __contains__(self, node: object) -> bool:
        return node in self.kinds

    def __len__(self) -> int:
        return len(self.kinds)

    def _check(self, node: str) -> None:
        if node not in self.kinds:
            raise GraphError(f"unknown node {node!r}; graph has {list(self.kinds)}")

    def parents(self, node: str) -> tuple[str, ...]:
        self._check(node)
        return self._parents[node]

    def children(self, node: str) -> tuple[str, ...]:
        self._check(node)
        return tuple(n for n in self._topo if node in self._parents[n])

    def ancestors(self, node: str) -> set[str]:
        self._check(node)
        return set(nx.ancestors(self._dag, node))

    def descendants(self, nodes: str | Iterable[str]) -> set[str]:
        """Strict descendants of one node or of a set of nodes (the set itself excluded unless reached)."""
        nodes = [nodes] if isinstance(nodes, str) else list(nodes)
        out: set[str] = set()
        for n in nodes:
            self._check(n)
            out |= nx.descendants(self._dag, n)
        return out

    def c_components(self) -> list[tuple[str, ...]]:
        """Connected components of the bidirected part (singletons included), each in topological order."""
        g = nx.Graph()
        g.add_nodes_from(self.kinds)
        g.add_edges_from(self.confounded)
        pos = {n: i for i, n in enumerate(self._topo)}
        comps = [tuple(sorted(c, key=pos.__getitem__)) for c in nx.connected_components(g)]
        return sorted(comps, key=lambda c: pos[c[0]])

    def c_component_of(self, node: str) -> tuple[str, ...]:
        self._check(node)
        return next(c for c in self.c_components() if node in c)

    def ancestral_subgraph(self, nodes: str | Iterable[str]) -> CausalGraph:
        """The sub-graph induced by `nodes` and all their ancestors (bidirected edges kept inside it)."""
        nodes = [nodes] if isinstance(nodes, str) else list(nodes)
        keep = set(nodes)
        for n in nodes:
            keep |= self.ancestors(n)
        return self.subgraph(keep)

    def subgraph(self, nodes: Iterable[str]) -> CausalGraph:
        """The sub-graph induced by `nodes`."""
        keep = set(nodes)
        for n in keep:
            self._check(n)
        ordered = [n for n in self.kinds if n in keep]
        return CausalGraph(
            {n: self.kinds[n] for n in ordered},
            {n: [p for p in self._parents[n] if p in keep] for n in ordered},
            [p for p in self.confounded if p[0] in keep and p[1] in keep],
            allow_image_children=self.allow_image_children,
            name=self.name,
        )

    def to_networkx(self) -> nx.DiGraph:
        """A networkx DiGraph; bidirected edges are stored in graph attribute `confounded`."""
        g = nx.DiGraph()
        for n, k in self.kinds.items():
            g.add_node(n, kind=str(k))
        g.add_edges_from((p, n) for n in self.kinds for p in self._parents[n])
        g.graph["confounded"] = list(self.confounded)
        g.graph["name"] = self.name
        return g

    def draw(self, path: str | Path) -> Path:
        """Draw the graph to a PNG: solid arrows for causes, dashed curves for hidden confounders."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        g = self.to_networkx()
        for layer, nodes in enumerate(nx.topological_generations(g)):
            for n in nodes:
                g.nodes[n]["layer"] = layer
        pos = nx.multipartite_layout(g, subset_key="layer")
        fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(self)), 3.5))
        colors = ["#f6c28b" if self.kinds[n].is_image else "#9cc5e8" for n in g.nodes]
        nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colors, node_size=1800)
        nx.draw_networkx_labels(g, pos, ax=ax, font_size=9)
        nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=18, node_size=1800)
        if self.confounded:
            bi = nx.DiGraph(self.confounded)
            nx.draw_networkx_edges(
                bi,
                pos,
                ax=ax,
                style="dashed",
                edge_color="#c0392b",
                arrows=True,
                arrowstyle="<|-|>",
                connectionstyle="arc3,rad=0.35",
                node_size=1800,
            )
        ax.set_title(self.name)
        ax.axis("off")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path

    def __repr__(self) -> str:
        edges = [f"{p}->{n}" for n in self._topo for p in self._parents[n]]
        bi = [f"{a}<->{b}" for a, b in self.confounded]
        return f"CausalGraph({self.name!r}, nodes={list(self.kinds)}, edges={edges + bi})"


def _positive_int(value: Any, where: str) -> int:
    """`value` as a positive int: digits in text are read, anything else (a float, a bool) is an error."""
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise GraphError(f"{where}: {value!r} is not an integer")
    if value <= 0:
        raise GraphError(f"{where}: {value} is not positive")
    return int(value)


def _load_yaml_no_duplicates(text: str, source: str) -> Any:
    """yaml.safe_load that refuses duplicate mapping keys (a duplicate node would otherwise vanish)."""

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise GraphError(f"duplicate node {key!r} in {source} (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - SafeLoader subclass
