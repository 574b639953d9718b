"""`python -m imcf.identify graph=<name|path.yaml> query="P(...)" [families=<run dir|mechanisms.yaml>]
[identify.strict=true] [format=json]`: the verdict of one query, as text or JSON.

The command line is an OmegaConf dot-list merged onto a typed config, as Hydra composes train.py's: unknown
keys and values of the wrong type are refused with the key named.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from imcf.config import IdentifyConfig
from imcf.graph import CausalGraph, GraphError
from imcf.identify.identification import identify
from imcf.identify.query import QueryError
from imcf.identify.verdict import NotIdentifiableError, assumptions_for, raise_if_strict

USAGE = (
    'usage: python -m imcf.identify graph=<name|path.yaml> query="P(Y | do(X))" '
    "[families=<run dir|mechanisms.yaml>] [identify.strict=true] [format=text|json]"
)


@dataclass
class IdentifyCommand:
    graph: str = MISSING  # a YAML path or a name under configs/graph/
    query: str = MISSING
    families: str | None = None  # a run directory or a mechanisms.yaml: names the assumptions answers rest on
    format: str = "text"  # text | json
    strict: bool = False  # the same as identify.strict
    identify: IdentifyConfig = field(default_factory=IdentifyConfig)


def load_graph(spec: str | Path) -> CausalGraph:
    """A graph from a YAML path or a name under configs/graph/ (cwd first, then the repository)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return CausalGraph.from_yaml(path)
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / "configs" / "graph" / f"{spec}.yaml"
        if candidate.is_file():
            return CausalGraph.from_yaml(candidate)
    raise GraphError(f"graph {spec!r} not found: not a YAML path and no configs/graph/{spec}.yaml")


def _load_families(spec: str) -> dict[str, Any]:
    from imcf.io import read_yaml

    path = Path(spec)
    if path.is_dir():
        path = path / "mechanisms.yaml"
    if not path.is_file():
        raise QueryError(f"families: {spec!r} is neither a mechanisms.yaml nor a run directory holding one")
    return dict(read_yaml(path) or {})


def format_result(result: dict[str, Any]) -> str:
    """Human-readable lines for a verdict dict or Identification.to_dict()."""
    lines = [
        f"query:      {result['query']}",
        f"algorithm:  {result['algorithm']}",
        f"verdict:    {result['status']}",
    ]
    if result.get("estimand"):
        lines.append(f"estimand:   {result['estimand']}")
    if result.get("experiments"):
        lines.append(f"needs:      {', '.join(result['experiments'])}")
    if result.get("reason"):
        lines.append(f"why:        {result['reason']}")
    for node, text in (result.get("assumptions") or {}).items():
        lines.append(f"assumes:    {node}: {text}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> IdentifyCommand:
    """The typed command from `key=value` arguments; raises OmegaConfBaseException or ValueError."""
    bare = [a for a in argv if "=" not in a]
    if bare:
        raise ValueError(f"unknown argument {bare[0]!r}; use graph=, query=, families=, identify.strict=, format=")
    cfg = OmegaConf.merge(OmegaConf.structured(IdentifyCommand), OmegaConf.from_dotlist(list(argv)))
    missing = [k for k in ("graph", "query") if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ValueError(f"missing {' and '.join(f'{k}=' for k in missing)}")
    if cfg.format not in ("text", "json"):
        raise ValueError(f"format={cfg.format} is not one of text, json")
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the verdict of one query; 0 on success, 1 when it fails (or is refused by strict), 2 on usage."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(USAGE)
        return 0
    try:
        cmd = parse_args(argv)
    except (OmegaConfBaseException, ValueError) as e:
        print(f"error: {e}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        graph = load_graph(cmd.graph)
        families = _load_families(cmd.families) if cmd.families else None
        result = identify(graph, cmd.query).to_dict()
        result["graph"] = graph.name
        rests = result["mechanism_nodes"] if result["status"] == "rests_on_mechanism" else []
        result["assumptions"] = assumptions_for(rests, families)
        raise_if_strict(result, cmd.strict or cmd.identify.strict)
    except (GraphError, QueryError, NotIdentifiableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if cmd.format == "json" else format_result(result))
    return 0
