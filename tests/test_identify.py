"""Identifiability: textbook cases with known answers, checked symbolically and numerically.

Numerical checks use a small discrete SCM with explicit hidden confounders (one latent per bidirected edge)
and brute-force enumeration of every exogenous configuration: the estimand, evaluated on the SCM's own
observational (or interventional) distribution, must equal the true interventional / counterfactual value.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from imcf.graph import CausalGraph
from imcf.identify import (
    NotIdentifiableError,
    QueryError,
    counterfactual_verdict,
    evaluate,
    family_assumption,
    identify,
    main,
    parse_query,
    verdict,
)


def make_graph(parents: dict[str, list[str]], confounded=(), name: str = "g") -> CausalGraph:
    nodes = {n: {"kind": "binary", "parents": p} for n, p in parents.items()}
    return CausalGraph.from_dict({"name": name, "nodes": nodes, "confounded": [list(c) for c in confounded]})


class DiscreteSCM:
    """Binary variables; each has its own 4-valued noise and one binary latent per bidirected edge."""

    def __init__(self, graph: CausalGraph, seed: int):
        rng = np.random.default_rng(seed)
        self.graph, self.order = graph, graph.topological_order
        self.latents = [tuple(c) for c in graph.confounded]
        self.p_latent = rng.uniform(0.2, 0.8, size=len(self.latents))
        self.p_own = {n: rng.dirichlet(np.ones(4)) for n in self.order}
        self.table = {}  # (node, parent values, latent values, own noise) -> value
        for n in self.order:
            arity = len(graph.parents(n)) + sum(n in c for c in self.latents)
            keys = list(itertools.product((0, 1), repeat=arity))
            while True:  # positivity (both values under every key) and every input matters
                rows = {
                    k: tuple(rng.permutation([0, 1, int(rng.integers(0, 2)), int(rng.integers(0, 2))])) for k in keys
                }
                if all(any(rows[k] != rows[k[:i] + (1 - k[i],) + k[i + 1 :]] for k in keys) for i in range(arity)):
                    break
            for k, row in rows.items():
                for u, value in enumerate(row):
                    self.table[(n, k, u)] = int(value)
        self._cache: dict = {}

    def noises(self):
        if not hasattr(self, "_noises"):
            self._noises = list(self._enumerate_noises())
        return self._noises

    def worlds(self, do: dict) -> list[dict]:
        key = ("worlds", tuple(sorted(do.items())))
        if key not in self._cache:
            self._cache[key] = [self.world(lat, own, do) for _, lat, own in self.noises()]
        return self._cache[key]

    def _enumerate_noises(self):
        for lat in itertools.product((0, 1), repeat=len(self.latents)):
            p_lat = np.prod([p if v else 1 - p for p, v in zip(self.p_latent, lat)])
            for own in itertools.product(range(4), repeat=len(self.order)):
                p = p_lat * np.prod([self.p_own[n][u] for n, u in zip(self.order, own)])
                yield p, lat, dict(zip(self.order, own))

    def world(self, lat, own, do):
        values = {}
        for n in self.order:
            if n in do:
                values[n] = do[n]
                continue
            lat_vals = [lat[i] for i, c in enumerate(self.latents) if n in c]
            key = tuple(values[p] for p in self.graph.parents(n)) + tuple(lat_vals)
            values[n] = self.table[(n, key, own[n])]
        return values

    def joint(self, do: dict) -> dict:
        key = tuple(sorted(do.items()))
        if key not in self._cache:
            table: dict = {}
            for (p, _, _), world in zip(self.noises(), self.worlds(do)):
                v = tuple(sorted(world.items()))
                table[v] = table.get(v, 0.0) + p
            self._cache[key] = table
        return self._cache[key]

    def prob(self, event: dict, given: dict, do: dict) -> float:
        """P(event | given) in the world do(do)."""
        table = self.joint(do)

        def mass(cond):
            return sum(p for v, p in table.items() if all(dict(v)[k] == x for k, x in cond.items()))

        den = mass(given)
        return mass({**given, **event}) / den if den else 0.0

    def counterfactual(self, terms: list[tuple[str, dict, int]]) -> float:
        """P(conjunction of Y_{do} = y) over parallel worlds sharing the exogenous noise."""
        worlds = [self.worlds(do) for _, do, _ in terms]
        total = 0.0
        for i, (p, _, _) in enumerate(self.noises()):
            if all(w[i][n] == y for w, (n, _, y) in zip(worlds, terms)):
                total += p
        return total


def estimand_value(result, scm: DiscreteSCM, values: dict) -> float:
    domains = {n: (0, 1) for n in scm.order}
    return evaluate(result.estimand, values, scm.prob, domains)


BACKDOOR = {"Z": [], "X": ["Z"], "Y": ["X", "Z"]}
FRONTDOOR = ({"X": [], "M": ["X"], "Y": ["M"]}, [("X", "Y")])
BOW = ({"X": [], "Y": ["X"]}, [("X", "Y")])
NAPKIN = ({"W": [], "R": ["W"], "X": ["R"], "Y": ["X"]}, [("W", "X"), ("W", "Y")])
MORPHO = {
    "name": "morphomnist",
    "nodes": {
        "thickness": {"kind": "continuous", "parents": []},
        "intensity": {"kind": "continuous", "parents": ["thickness"]},
        "digit": {"kind": "categorical", "num_classes": 10, "parents": []},
        "image": {"kind": "image", "shape": [1, 28, 28], "parents": ["thickness", "intensity", "digit"]},
    },
}
FAMILIES = {"thickness": "flow", "intensity": "flow", "digit": {"family": "discrete"}, "image": "hvae"}


def morpho(confounded: bool) -> CausalGraph:
    return CausalGraph.from_dict({**MORPHO, "confounded": [["thickness", "intensity"]] if confounded else []})


# ---------------------------------------------------------------- interventional: ID / IDC
def test_backdoor_adjustment_formula_and_value():
    g = make_graph(BACKDOOR)
    r = identify(g, "P(Y | do(X))")
    assert r.status == "identified" and r.algorithm == "ID"
    assert str(r.estimand) == "sum_{Z} P(Z) P(Y | X, Z)"
    scm = DiscreteSCM(g, seed=0)
    for x, y in itertools.product((0, 1), repeat=2):
        truth = scm.prob({"Y": y}, {}, {"X": x})
        assert estimand_value(r, scm, {"X": x, "Y": y}) == pytest.approx(truth, abs=1e-12)


def test_conditional_query_uses_idc_rule_two():
    g = make_graph(BACKDOOR)
    r = identify(g, "P(Y | do(X), Z)")
    assert r.algorithm == "IDC" and str(r.estimand) == "P(Y | X, Z)"
    scm = DiscreteSCM(g, seed=1)
    for x, y, z in itertools.product((0, 1), repeat=3):
        truth = scm.prob({"Y": y}, {"Z": z}, {"X": x})
        assert estimand_value(r, scm, {"X": x, "Y": y, "Z": z}) == pytest.approx(truth, abs=1e-12)


def test_frontdoor():
    g = make_graph(*FRONTDOOR)
    r = identify(g, "P(Y | do(X))")
    assert r.status == "identified"
    assert str(r.estimand) == "sum_{M} P(M | X) [sum_{X'} P(X=X') P(Y | M, X=X')]"
    scm = DiscreteSCM(g, seed=2)
    for x, y in itertools.product((0, 1), repeat=2):
        truth = scm.prob({"Y": y}, {}, {"X": x})
        assert estimand_value(r, scm, {"X": x, "Y": y}) == pytest.approx(truth, abs=1e-12)


def test_bow_is_not_identifiable_and_strict_names_the_path():
    g = make_graph(*BOW)
    r = identify(g, "P(Y | do(X))")
    assert r.status == "not_identified" and not r.identifiable and r.estimand is None
    assert r.path == ["X", "Y"] and "hedge" in r.reason
    v = verdict(g, do=["X"], outcome=["Y"])
    assert v["status"] == "not_identified" and "X <-> Y" in v["warning"]
    with pytest.raises(NotIdentifiableError, match="X <-> Y"):
        verdict(g, do=["X"], outcome=["Y"], strict=True)


def test_napkin_ratio_estimand_matches_truth():
    # y0 0.2.11 returns P(Y | X) here (its issue #372); the right answer is a ratio over W.
    g = make_graph(*NAPKIN)
    r = identify(g, "P(Y | do(X))")
    assert r.status == "identified"
    assert str(r.estimand) == "[sum_{W} P(W) P(X | R, W) P(Y | R, W, X)] / [sum_{W} P(W) P(X | R, W)]"
    scm = DiscreteSCM(g, seed=3)
    naive_gap = 0.0
    for x, y, rr in itertools.product((0, 1), repeat=3):
        truth = scm.prob({"Y": y}, {}, {"X": x})
        assert estimand_value(r, scm, {"X": x, "Y": y, "R": rr}) == pytest.approx(truth, abs=1e-12)
        naive_gap = max(naive_gap, abs(scm.prob({"Y": y}, {"X": x}, {}) - truth))
    assert naive_gap > 1e-3  # confounding is real in this SCM: P(Y | X) would be wrong


def test_values_in_the_query_appear_in_the_estimand():
    r = identify(make_graph(BACKDOOR), "P(Y=y1 | do(X=x0))")
    assert str(r.estimand) == "sum_{Z} P(Z) P(Y=y1 | X=x0, Z)"


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_every_identified_effect_is_numerically_right(seed):
    """Soundness on random 4-node graphs: whenever ID answers, its estimand equals the truth."""
    rng = np.random.default_rng(100 + seed)
    names = ["A", "B", "C", "D"]
    parents = {n: [m for m in names[:i] if rng.random() < 0.5] for i, n in enumerate(names)}
    pairs = [p for p in itertools.combinations(names, 2) if rng.random() < 0.35]
    g = make_graph(parents, pairs)
    scm = DiscreteSCM(g, seed=seed)
    answered = 0
    for x, y in itertools.permutations(names, 2):
        r = identify(g, f"P({y} | do({x}))")
        if not r.identifiable:
            assert len(r.path) >= 2  # a bidirected path inside the hedge
            continue
        answered += 1
        free = {n: 0 for n in names}
        for xv, yv in itertools.product((0, 1), repeat=2):
            truth = scm.prob({y: yv}, {}, {x: xv})
            assert estimand_value(r, scm, {**free, x: xv, y: yv}) == pytest.approx(truth, abs=1e-10)
    assert answered > 0


def test_verdicts_agree_with_y0_on_random_graphs():
    """y0's verdicts (not its estimands) are a second, independent implementation of ID."""
    pytest.importorskip("y0")
    from y0.algorithm.identify import identify_outcomes
    from y0.dsl import Variable
    from y0.graph import NxMixedGraph

    rng = np.random.default_rng(7)
    names = ["A", "B", "C", "D", "E"]
    for _ in range(25):
        parents = {n: [m for m in names[:i] if rng.random() < 0.4] for i, n in enumerate(names)}
        pairs = [p for p in itertools.combinations(names, 2) if rng.random() < 0.3]
        g = make_graph(parents, pairs)
        ny = NxMixedGraph.from_str_edges(
            nodes=names, directed=[(p, n) for n in names for p in parents[n]], undirected=pairs
        )
        for x, y in itertools.permutations(names, 2):
            ours = identify(g, f"P({y} | do({x}))").identifiable
            theirs = identify_outcomes(ny, treatments={Variable(x)}, outcomes={Variable(y)}) is not None
            assert ours == theirs, (parents, pairs, x, y)


# ---------------------------------------------------------------- counterfactual: ID* / IDC*
def test_counterfactual_identifiable_only_with_an_experiment():
    # ID* and IDC* identify counterfactuals from P_*, the set of all interventional distributions
    # (Shpitser & Pearl 2008). In X -> Y, X -> Z, X <-> Y the cross-world joint P(Y_{x1}, Z_{x0}) can be
    # observed in no single world, yet it factorises as P_{x1}(Y) P_{x0}(Z). P(Z | do(x0)) = P(Z | x0) comes
    # from observational data, but P(Y | do(x1)) does not (X <-> Y is the bow): the counterfactual is
    # identifiable only with a randomized experiment on X.
    g = make_graph({"X": [], "Y": ["X"], "Z": ["X"]}, [("X", "Y")])
    r = identify(g, "P(Y_{do(X=x1)}=y, Z_{do(X=x0)}=z)")
    assert r.status == "identified_with_experiments" and r.algorithm == "ID*"
    assert r.experiments == ["P(Y=y | do(X=x1))"]
    assert str(r.estimand) == "P(Y=y | do(X=x1)) P(Z=z | X=x0)"
    assert identify(g, "P(Y | do(X))").status == "not_identified"
    scm = DiscreteSCM(g, seed=4)
    for y, z in itertools.product((0, 1), repeat=2):
        truth = scm.counterfactual([("Y", {"X": 1}, y), ("Z", {"X": 0}, z)])
        assert estimand_value(r, scm, {"x1": 1, "x0": 0, "y": y, "z": z}) == pytest.approx(truth, abs=1e-12)


def test_effect_of_treatment_on_the_treated_front_door():
    # ETT P(Y_{x1} | X=x0) is identified in the front-door graph from observational data (Shpitser & Pearl 2009).
    g = make_graph(*FRONTDOOR)
    r = identify(g, "P(Y_{do(X=x1)}=y | X=x0)")
    assert r.status == "identified" and r.algorithm == "IDC*"
    assert str(r.estimand) == "sum_{M} P(Y=y | M, X=x0) P(M | X=x1)"
    scm = DiscreteSCM(g, seed=5)
    for y, x0 in itertools.product((0, 1), repeat=2):
        x1 = 1 - x0
        truth = scm.counterfactual([("Y", {"X": x1}, y), ("X", {}, x0)]) / scm.prob({"X": x0}, {}, {})
        assert estimand_value(r, scm, {"x1": x1, "x0": x0, "y": y}) == pytest.approx(truth, abs=1e-12)
    assert identify(make_graph(*BOW), "P(Y_{do(X=x1)} | X=x0)").status == "not_identified"


def test_shpitser_pearl_figure_9_conditional_counterfactual():
    # P(y_x | x', z_d, d) in X -> W -> Y <- Z <- D, X <-> Y (Shpitser & Pearl 2008, Fig. 9).
    g = make_graph({"X": [], "W": ["X"], "D": [], "Z": ["D"], "Y": ["W", "Z"]}, [("X", "Y")])
    r = identify(g, "P(Y_{do(X=x)}=y | X=x1, Z_{do(D=d)}=z, D=d)")
    assert r.status == "identified"
    assert str(r.estimand) == "sum_{W} P(Y=y | W, X=x1, Z=z) P(W | X=x)"
    scm = DiscreteSCM(g, seed=6)
    for y, z, d, x in itertools.product((0, 1), repeat=4):
        x1 = 1 - x
        cond = [("X", {}, x1), ("Z", {"D": d}, z), ("D", {}, d)]
        den = scm.counterfactual(cond)
        truth = scm.counterfactual([("Y", {"X": x}, y), *cond]) / den
        assert estimand_value(r, scm, {"x": x, "x1": x1, "y": y, "z": z, "d": d}) == pytest.approx(truth, abs=1e-12)


def test_probability_of_necessity_rests_on_the_mechanism():
    g = make_graph({"X": [], "Y": ["X"]})
    r = identify(g, "P(Y_{do(X=x0)}=y0 | X=x1, Y=y1)")
    assert r.status == "rests_on_mechanism" and r.mechanism_nodes == ["Y"]


def test_non_descendant_counterfactual_is_a_copy_of_the_factual():
    r = identify(morpho(True), "P(thickness_{do(intensity=i1)} | thickness, intensity)")
    assert r.status == "identified" and str(r.estimand) == "1[thickness' = thickness]"


# ---------------------------------------------------------------- MorphoMNIST
def test_morphomnist_interventional_queries():
    g, gc = morpho(False), morpho(True)
    assert str(identify(g, "P(intensity | do(thickness))").estimand) == "P(intensity | thickness)"
    assert identify(g, "P(thickness | do(intensity))").estimand is not None
    r = identify(gc, "P(intensity | do(thickness))")
    assert r.status == "not_identified" and r.path == ["thickness", "intensity"]
    # thickness blocks the back-door through the confounder: the image's response to intensity is identified
    r = identify(gc, "P(image | do(intensity))")
    assert str(r.estimand) == "sum_{digit, thickness} P(thickness) P(digit) P(image | digit, intensity, thickness)"


def test_morphomnist_counterfactual_verdict_without_confounding():
    v = counterfactual_verdict(morpho(False), {"thickness": 2.5}, families=FAMILIES)
    json.dumps(v)  # evaluate.py writes it to metrics.json
    assert v["status"] == "rests_on_mechanism" and not v["identifiable"]
    nodes = v["nodes"]
    assert nodes["thickness"]["status"] == "intervened"
    assert nodes["digit"]["status"] == "identified" and nodes["digit"]["estimand"] == "1[digit' = digit]"
    assert nodes["intensity"]["status"] == nodes["image"]["status"] == "rests_on_mechanism"
    assert "exact invertible" in v["assumptions"]["intensity"]
    assert "approximate abduction" in v["assumptions"]["image"]
    assert "intensity" in v["warning"]
    v = counterfactual_verdict(morpho(False), {"digit": 3}, families=FAMILIES, strict=True)
    assert v["status"] == "rests_on_mechanism" and set(v["assumptions"]) == {"image"} and v["warning"] is None


def test_morphomnist_counterfactual_verdict_with_confounding():
    gc = morpho(True)
    v = counterfactual_verdict(gc, {"thickness": 2.5}, families=FAMILIES)
    assert v["status"] == "not_identified" and set(v["path"]) == {"thickness", "intensity"}
    assert v["nodes"]["intensity"]["status"] == "not_identified"
    with pytest.raises(NotIdentifiableError, match="thickness|intensity"):
        counterfactual_verdict(gc, {"thickness": 2.5}, families=FAMILIES, strict=True)
    # intervening on intensity with thickness observed: the confounder is blocked, only the image's own
    # noise is abducted
    v = counterfactual_verdict(gc, {"intensity": 0.5}, families=FAMILIES, strict=True)
    assert v["status"] == "rests_on_mechanism" and v["nodes"]["thickness"]["status"] == "identified"


# ---------------------------------------------------------------- families, parsing, CLI
def test_family_assumptions():
    for fam in ("flow", "ddim", "linear_gaussian"):
        assert family_assumption(fam).startswith("exact invertible")
    for fam in ("vae", "hvae", "gan"):
        assert family_assumption(fam).startswith("approximate abduction")
    assert "Gumbel-max" in family_assumption("discrete")
    assert "Gumbel-max" in family_assumption("discrete", {"mode": "gumbel"})
    assert "threshold" in family_assumption("discrete", {"mode": "threshold"})
    assert "states no abduction assumption" in family_assumption("made_up")


def test_query_parsing_and_errors():
    q = parse_query("P(Y_{do(X=x1)}, Z_{X=x0} | X, Y=y)")
    assert [cv.label() for cv, _ in q.outcome] == ["Y_{do(X=x1)}", "Z_{do(X=x0)}"]
    assert [s for _, s in q.outcome] == ["Y'", "Z"] and not q.interventional
    assert parse_query("P(Y | do(X), Z)").interventional
    g = make_graph(BACKDOOR)
    with pytest.raises(QueryError, match="unknown node 'Q'"):
        identify(g, "P(Q | do(X))")
    with pytest.raises(QueryError, match="mixes do"):
        parse_query("P(Y_{do(X)} | do(Z))")
    with pytest.raises(QueryError, match="both intervened on and observed"):
        parse_query("P(Y | do(X), X)")
    with pytest.raises(QueryError, match="must look like"):
        parse_query("Y | X")


def test_cli_prints_verdict_and_estimand(tmp_path, capsys):
    path = tmp_path / "morpho.yaml"
    morpho(True).to_yaml(path)
    assert main([f"graph={path}", "query=P(image | do(intensity))"]) == 0
    out = capsys.readouterr().out
    assert "verdict:    identified" in out and "P(image | digit, intensity, thickness)" in out
    assert main([f"graph={path}", "query=P(intensity | do(thickness))", "format=json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == ["thickness", "intensity"]
    assert main([f"graph={path}", "query=P(intensity | do(thickness))", "identify.strict=true"]) == 1
    assert "thickness <-> intensity" in capsys.readouterr().err
    assert main([f"graph={tmp_path / 'missing.yaml'}", "query=P(a | do(b))"]) == 1


def test_a_new_family_states_its_own_assumption_without_editing_identify():
    """A family's `abduction_assumption` reaches the verdict, whether it is named (as SCM.verdict does) or
    passed as the class; a family that states none gets the base class's text."""
    from imcf.mechanisms import Mechanism
    from imcf.registry import MECHANISMS

    class ToyImage(Mechanism):
        abduction_assumption = "toy abduction: the toy encoder's code is the noise"
        abduct = predict = sample_noise = loss = None  # never called: identify reads only the class

    class Silent(ToyImage):
        abduction_assumption = Mechanism.abduction_assumption

    MECHANISMS.register("toy_image")(ToyImage)
    try:
        for image_family in ("toy_image", ToyImage):
            v = counterfactual_verdict(morpho(False), {"digit": 3}, families={**FAMILIES, "image": image_family})
            assert v["assumptions"] == {"image": ToyImage.abduction_assumption}
    finally:
        del MECHANISMS["toy_image"]
    assert "states no abduction assumption" in family_assumption(Silent)
