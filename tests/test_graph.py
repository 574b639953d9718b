"""CausalGraph: construction, queries, c-components, and errors that name the culprit."""

import networkx as nx
import pytest

from imcf.graph import CausalGraph, GraphError, NodeKind

MORPHO = {
    "name": "morpho",
    "nodes": {
        "thickness": {"kind": "continuous"},
        "intensity": {"kind": "continuous", "parents": ["thickness"]},
        "digit": {"kind": "categorical", "num_classes": 10},
        "image": {"kind": "image", "shape": [1, 32, 32], "parents": ["thickness", "intensity", "digit"]},
    },
}


def test_kinds_parse_short_and_long_forms():
    assert NodeKind.parse("categorical(10)") == NodeKind("categorical", 10)
    assert NodeKind.parse({"kind": "image", "shape": [3, 64, 64]}).tensor_shape == (3, 64, 64)
    assert NodeKind.parse("image(1,32,32)").dim == 1024
    assert NodeKind.parse("binary").tensor_shape == (1,)
    with pytest.raises(GraphError, match="num_classes"):
        NodeKind.parse("categorical")
    with pytest.raises(GraphError, match="unknown node kind 'colour'"):
        NodeKind.parse("colour")


def test_queries_on_morpho_graph():
    g = CausalGraph.from_dict(MORPHO)
    assert g.topological_order == ("thickness", "intensity", "digit", "image")
    assert g.parents("image") == ("thickness", "intensity", "digit")
    assert g.children("thickness") == ("intensity", "image")
    assert g.ancestors("image") == {"thickness", "intensity", "digit"}
    assert g.descendants("thickness") == {"intensity", "image"}
    assert g.descendants(["digit", "intensity"]) == {"image"}
    assert g.c_components() == [("thickness",), ("intensity",), ("digit",), ("image",)]
    sub = g.ancestral_subgraph("intensity")
    assert sub.nodes == ("thickness", "intensity")
    nxg = g.to_networkx()
    assert isinstance(nxg, nx.DiGraph) and set(nxg.edges) == {
        ("thickness", "intensity"),
        ("thickness", "image"),
        ("intensity", "image"),
        ("digit", "image"),
    }


def test_c_components_with_two_bidirected_edges():
    spec = {
        "nodes": {n: {"kind": "continuous"} for n in "abcdef"},
        "confounded": [["a", "c"], ["c", "e"]],
    }
    spec["nodes"]["b"]["parents"] = ["a"]
    spec["nodes"]["e"]["parents"] = ["d"]
    g = CausalGraph.from_dict(spec)
    assert g.c_components() == [("a", "c", "e"), ("b",), ("d",), ("f",)]
    assert g.c_component_of("e") == ("a", "c", "e")
    assert g.subgraph(["a", "c"]).confounded == [("a", "c")]


def test_yaml_round_trip_and_python_construction(tmp_path):
    g = CausalGraph.from_dict({**MORPHO, "confounded": [["thickness", "intensity"]]})
    path = tmp_path / "g.yaml"
    g.to_yaml(path)
    g2 = CausalGraph.from_yaml(path)
    assert g2.to_dict() == g.to_dict()
    g3 = CausalGraph({"a": "continuous", "b": "binary"}, {"b": ["a"]}, confounded=[("a", "b")])
    assert g3.parents("b") == ("a",) and g3.c_components() == [("a", "b")]


def test_top_level_node_form():
    g = CausalGraph.from_dict(
        {"a": {"kind": "continuous"}, "b": {"kind": "binary", "parents": ["a"]}, "confounded": []}
    )
    assert g.nodes == ("a", "b")


def test_draw_writes_png(tmp_path):
    g = CausalGraph.from_dict({**MORPHO, "confounded": [["thickness", "intensity"]]})
    out = g.draw(tmp_path / "g.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {
                "a": {"kind": "continuous", "parents": ["c"]},
                "b": {"kind": "continuous", "parents": ["a"]},
                "c": {"kind": "continuous", "parents": ["b"]},
            },
            r"cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)",
        ),
        ({"a": {"kind": "continuous", "parents": ["ghost"]}}, "node 'a' has unknown parent 'ghost'"),
        ({"a": {"kind": "continuous", "parents": ["a"]}}, "self-loop: node 'a'"),
        ({"a": "continuous", "confounded": [["a", "nobody"]]}, "names unknown node 'nobody'"),
        ({"img": "image(1,8,8)", "y": {"kind": "binary", "parents": ["img"]}}, "image node 'img' has children"),
        ({"a": {"kind": "continuous", "colour": "red"}}, r"node 'a': unknown keys \['colour'\]"),
        ({"a": {"parents": []}}, "node 'a': missing 'kind'"),
        ({"img": {"kind": "image", "shape": [0, 32, 32]}}, r"node 'img': image shape \[0, 32, 32\]: 0 is not positive"),
        ({"img": {"kind": "image", "shape": [1, -32, 32]}}, r"node 'img': image shape .*: -32 is not positive"),
        ({"img": {"kind": "image", "shape": [1, 32.7, 32]}}, r"node 'img': image shape .*: 32.7 is not an integer"),
        ({"img": {"kind": "image", "shape": "abc"}}, r"node 'img': image shape 'abc' must be a list \[C, H, W\]"),
        ({"img": {"kind": "image", "shape": [1, True, 32]}}, r"node 'img': image shape .*: True is not an integer"),
        ({"img": "image(1,abc,32)"}, r"node 'img': image\(1,abc,32\): 'abc' is not an integer"),
        ({"img": "image(1,0,32)"}, r"node 'img': image\(1,0,32\): 0 is not positive"),
        ({"y": "categorical(2.5)"}, r"node 'y': categorical\(2.5\): '2.5' is not an integer"),
        ({"y": {"kind": "categorical", "num_classes": 1.5}}, r"node 'y': num_classes 1.5: 1.5 is not an integer"),
        ({"a": "continuous", "b": {"kind": "continuous", "parents": "ab"}}, r"node 'b': parents must be a list"),
        ({"a": "continuous", "b": {"kind": "continuous", "parents": 3}}, r"node 'b': parents must be a list"),
        # a misspelt `confounded` beside `nodes:` dropped the confounder silently; a flat pair split into letters
        ({"nodes": {"a": "continuous"}, "confouned": [["a", "b"]]}, r"graph spec: unknown key\(s\) \['confouned'\]"),
        ({"a": "continuous", "b": "continuous", "confounded": ["a", "b"]}, "each bidirected edge is a pair .* got 'a'"),
        ({"x": "continuous", "y": "continuous", "confounded": ["xy"]}, "each bidirected edge is a pair .* got 'xy'"),
        ({"a": "continuous", "confounded": [None]}, "each bidirected edge is a pair .* got None"),
        ({"a": "continuous", "confounded": "a"}, "confounded must be a list of"),
        ({"nodes": ["a", "b"]}, r"nodes must be a mapping of node name to spec, got \['a', 'b'\]"),
        ({"a": "continuous", "allow_image_children": "false"}, "allow_image_children must be true or false"),
    ],
)
def test_errors_name_the_culprit(spec, message):
    with pytest.raises(GraphError, match=message):
        CausalGraph.from_dict(spec)


def test_duplicate_node_in_yaml(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("nodes:\n  a: {kind: continuous}\n  b: {kind: continuous}\n  a: {kind: binary}\n")
    with pytest.raises(GraphError, match="duplicate node 'a'.*line 4"):
        CausalGraph.from_yaml(path)


def test_image_children_allowed_when_configured():
    g = CausalGraph.from_dict(
        {"img": "image(1,8,8)", "y": {"kind": "binary", "parents": ["img"]}, "allow_image_children": True}
    )
    assert g.children("img") == ("y",)


def test_unknown_node_query():
    g = CausalGraph.from_dict(MORPHO)
    with pytest.raises(GraphError, match="unknown node 'colour'"):
        g.parents("colour")


def test_python_constructor_rejects_a_string_of_parents_and_bad_kinds():
    with pytest.raises(GraphError, match=r"node 'b': parents must be a list"):
        CausalGraph({"a": "continuous", "b": "continuous"}, {"b": "a"})
    with pytest.raises(GraphError, match="positive"):
        NodeKind("image", shape=(1, 0, 8))
