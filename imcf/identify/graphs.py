"""The graph view identification works on: a CausalGraph with its nodes in topological order.

ID slices the graph over and over (sub-graphs, arrows cut into the treatments). Keeping the nodes of the
CausalGraph in topological order makes every sub-graph list its nodes in the order of the whole graph, so
factorisations and printed estimands do not depend on the order the YAML file named the nodes in.
"""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from imcf.graph import CausalGraph


class GraphView:
    """A CausalGraph seen by the identification algorithms: `order` (topological), `nodes`, sets of nodes in,
    sets of nodes out, ancestors and descendants including the nodes themselves."""

    def __init__(self, graph: CausalGraph) -> None:
        if graph.nodes != graph.topological_order:
            order = graph.topological_order
            graph = CausalGraph(
                {n: graph.kinds[n] for n in order},
                {n: graph.parents(n) for n in order},
                graph.confounded,
                allow_image_children=graph.allow_image_children,
                name=graph.name,
            )
        self.graph = graph
        self.order = graph.topological_order
        self.nodes = frozenset(self.order)
        self.bi = frozenset(frozenset(e) for e in graph.confounded)
        self._cut: dict[frozenset[str], GraphView] = {}  # the graph is immutable: slices are cached
        self._ancestors: dict[frozenset[str], frozenset[str]] = {}

    def parents(self, node: str) -> tuple[str, ...]:
        return self.graph.parents(node)

    def subgraph(self, keep: Iterable[str]) -> GraphView:
        """The view of the sub-graph induced by `keep` (nodes not in the graph are ignored)."""
        return GraphView(self.graph.subgraph(self.nodes & set(keep)))

    def cut_incoming(self, nodes: Iterable[str]) -> GraphView:
        """The graph with the arrows into `nodes` removed (G with X barred); bidirected edges are kept."""
        key = frozenset(nodes) & self.nodes
        if key not in self._cut:
            parents = {n: () if n in key else self.graph.parents(n) for n in self.order}
            cut = CausalGraph(
                self.graph.kinds, parents, self.graph.confounded, self.graph.allow_image_children, self.graph.name
            )
            self._cut[key] = GraphView(cut)
        return self._cut[key]

    def ancestors(self, nodes: Iterable[str]) -> set[str]:
        """Ancestors including the nodes themselves (directed edges only)."""
        key = frozenset(nodes)
        if key not in self._ancestors:
            self._ancestors[key] = key.union(*(self.graph.ancestors(n) for n in key))
        return set(self._ancestors[key])

    def descendants(self, nodes: Iterable[str]) -> set[str]:
        """Descendants including the nodes themselves."""
        nodes = set(nodes)
        return nodes | self.graph.descendants(nodes)

    def districts(self) -> list[frozenset[str]]:
        """The c-components, in topological order of their first node."""
        return [frozenset(c) for c in self.graph.c_components()]

    def bidirected_path(self, sources: Iterable[str], targets: Iterable[str]) -> list[str]:
        """A shortest path of bidirected edges from any source to any target ([] when there is none)."""
        g = nx.Graph()
        g.add_nodes_from(self.order)
        g.add_edges_from(self.graph.confounded)
        best: list[str] = []
        for s in sorted(set(sources) & self.nodes, key=self.order.index):
            for t in sorted(set(targets) & self.nodes, key=self.order.index):
                if s != t and nx.has_path(g, s, t):
                    p = nx.shortest_path(g, s, t)
                    if not best or len(p) < len(best):
                        best = p
        return best

    def d_separated(
        self,
        a: Iterable[str],
        b: Iterable[str],
        given: Iterable[str] = (),
        cut_in: Iterable[str] = (),
        cut_out: Iterable[str] = (),
    ) -> bool:
        """(a _||_ b | given) in the graph with arrows into `cut_in` and out of `cut_out` removed."""
        a, b, given = set(a), set(b), set(given)
        if a & b:
            return False
        cut_in, cut_out = set(cut_in), set(cut_out)
        dag = nx.DiGraph()
        dag.add_nodes_from(self.order)
        for n in self.order:
            if n not in cut_in:
                dag.add_edges_from((p, n) for p in self.graph.parents(n) if p not in cut_out)
        for i, (u, v) in enumerate(self.graph.confounded):  # one latent parent per bidirected edge
            if u not in cut_in and v not in cut_in:
                dag.add_edges_from([(("_latent", i), u), (("_latent", i), v)])
        return nx.is_d_separator(dag, a, b, given - a - b)
