"""Embedded synthetic faces: procedural 64x64 cartoon faces drawn from a known SCM, with true counterfactuals.

The SCM follows the complex CelebA benchmark graph (young, male -> beard, bald; all six -> image):

    young      = 1[u_young < P_YOUNG]              male       = 1[u_male < P_MALE]
    beard      = 1[u_beard < BEARD_PROB[young, male]]
    bald       = 1[u_bald  < BALD_PROB[young, male]]
    smiling    = 1[u_smiling < P_SMILING]          eyeglasses = 1[u_eyeglasses < P_EYEGLASSES]
    image      = render(young, male, beard, bald, smiling, eyeglasses, u_image)

Every u is Uniform(0, 1); `u_image` holds the continuous style factors `STYLE_FACTORS` (skin tone, face shape,
eye spacing, hair colour, background colours and gradient, pose offset, lighting, ...). All u are stored, so
`true_counterfactual` re-renders the same face under an intervention, re-deriving beard and bald from their
own u when young or male change.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from imcf.data.base import SPLITS, CausalDataset, split_size, whole_option
from imcf.data.cache import CacheError, ensure_writable, load_set, save_set
from imcf.data.face_drawing import STYLE_FACTORS, render_face
from imcf.data.parallel import map_chunks
from imcf.graph import CausalGraph
from imcf.registry import DATASETS
from imcf.threads import generation_processes

#: binary attribute nodes, in topological order
ATTRIBUTES = ("young", "male", "beard", "bald", "smiling", "eyeglasses")
#: causal parents of each attribute (the image node has all six as parents)
PARENTS: dict[str, tuple[str, ...]] = {
    "young": (),
    "male": (),
    "beard": ("young", "male"),
    "bald": ("young", "male"),
    "smiling": (),
    "eyeglasses": (),
}
#: P(attribute = 1) of the root attributes
P_YOUNG = 0.6
P_MALE = 0.5
P_SMILING = 0.5
P_EYEGLASSES = 0.3
#: P(beard = 1 | young, male), keyed by (young, male): beards are mostly on older men
BEARD_PROB: dict[tuple[int, int], float] = {(0, 0): 0.04, (0, 1): 0.80, (1, 0): 0.02, (1, 1): 0.25}
#: P(bald = 1 | young, male), keyed by (young, male): baldness is mostly in older men
BALD_PROB: dict[tuple[int, int], float] = {(0, 0): 0.03, (0, 1): 0.60, (1, 0): 0.01, (1, 1): 0.05}
#: bump when the renderer or the SCM changes, so old caches are not reused
FORMAT_VERSION = 1

_ROOT_PROB = {"young": P_YOUNG, "male": P_MALE, "smiling": P_SMILING, "eyeglasses": P_EYEGLASSES}
_CHILD_PROB = {"beard": BEARD_PROB, "bald": BALD_PROB}


def scm_probabilities() -> dict[str, Any]:
    """The SCM's probability tables as plain data (used in the cache key and in the docs)."""
    return {
        **{f"p_{k}": v for k, v in _ROOT_PROB.items()},
        "beard_prob": {f"young={y},male={m}": p for (y, m), p in BEARD_PROB.items()},
        "bald_prob": {f"young={y},male={m}": p for (y, m), p in BALD_PROB.items()},
    }


def derive_attributes(u: Mapping[str, np.ndarray], do: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Attributes (uint8 arrays) from their exogenous u, with `do` values (scalars or per-row) forced."""
    do = dict(do or {})
    unknown = set(do) - set(ATTRIBUTES)
    if unknown:
        raise KeyError(f"do() names unknown faces attributes {sorted(unknown)}; known: {list(ATTRIBUTES)}")
    n = len(u["young"])
    out: dict[str, np.ndarray] = {}
    for a in ATTRIBUTES:
        if a in do:
            v = np.asarray(do[a], dtype=float).reshape(-1)
            if not np.all((v == 0) | (v == 1)) or v.size not in (1, n):
                raise ValueError(f"do({a}): expected 0/1, one value or one per row ({n}), got {do[a]!r}")
            out[a] = np.broadcast_to(v.astype(np.uint8), (n,)).copy()
        elif a in _ROOT_PROB:
            out[a] = (np.asarray(u[a]) < _ROOT_PROB[a]).astype(np.uint8)
        else:
            out[a] = (np.asarray(u[a]) < child_probability(a, out["young"], out["male"])).astype(np.uint8)
    return out


def child_probability(child: str, young: np.ndarray, male: np.ndarray) -> np.ndarray:
    """P(child = 1 | young, male) per row, from BEARD_PROB / BALD_PROB (child: beard or bald)."""
    table = _CHILD_PROB[child]
    grid = np.array([[table[(0, 0)], table[(0, 1)]], [table[(1, 0)], table[(1, 1)]]])
    return grid[np.asarray(young).astype(int), np.asarray(male).astype(int)]


# ----------------------------------------------------------------------------------------------------------
# rendering (the drawing itself: imcf.data.face_drawing)
# ----------------------------------------------------------------------------------------------------------
def _render_chunk(args: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
    attrs, style, size = args
    out = np.empty((len(attrs), size, size, 3), np.uint8)
    for i in range(len(attrs)):
        out[i] = render_face(dict(zip(ATTRIBUTES, attrs[i])), style[i], size)
    return out


def default_workers() -> int:
    """Rendering processes used when none are given: the run's thread plan (imcf.threads)."""
    return generation_processes()


def render_faces(
    attributes: np.ndarray,
    style: np.ndarray,
    size: int = 64,
    workers: int | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """Draw many faces: attributes (N, 6) in ATTRIBUTES order, style (N, D) -> (N, size, size, 3) uint8.
    `progress`: a label; when given, about ten lines `[imcf] <label>: rendered k/N faces` are printed."""
    n = len(attributes)
    workers = default_workers() if workers is None else max(1, int(workers))
    if n < 500:
        workers = 1
    bounds = np.linspace(0, n, 8 * workers + 1).astype(int)
    chunks = [(attributes[i:j], style[i:j], size) for i, j in zip(bounds[:-1], bounds[1:]) if j > i]
    chunks = chunks or [(attributes, style, size)]  # an empty batch: one empty chunk, no faces
    parts = map_chunks(_render_chunk, chunks, [len(c[0]) for c in chunks], workers, progress, "faces")
    return np.concatenate(parts)


def sample_exogenous(n: int, seed: int) -> dict[str, np.ndarray]:
    """Draw all exogenous noise of n faces: u_<attribute> (n,) and u_image (n, len(STYLE_FACTORS)), float32."""
    rng = np.random.default_rng(seed)
    u = {a: rng.random(n, dtype=np.float32) for a in ATTRIBUTES}
    u["image"] = rng.random((n, len(STYLE_FACTORS)), dtype=np.float32)
    return u


# ----------------------------------------------------------------------------------------------------------
# dataset with an on-disk cache
# ----------------------------------------------------------------------------------------------------------
TABLE_FILE, MANIFEST = "table.csv", "manifest.json"


@DATASETS.register("faces")
class FacesDataset(CausalDataset):
    """Synthetic cartoon faces with stored exogenous noise; generated once per option set and cached.

    Options: `sizes` (rows per split), `seed`, `size` (image side), `fixed` (attributes held at a constant for
    the whole dataset, a dataset-wide do(); the others are drawn from the SCM), `graph` (a graph spec to
    check against: its attribute nodes must be faces attributes and its image node [3, size, size]),
    `workers` (rendering processes; default all cores). The batch always holds all six attributes.
    """

    default_graph = "faces_complex"
    has_ground_truth = True

    def __init__(
        self,
        root: str = "data",
        split: str = "train",
        sizes: Mapping[str, int] | None = None,
        seed: int = 0,
        size: int = 64,
        fixed: Mapping[str, int] | None = None,
        graph: Mapping[str, Any] | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__(root, split)
        sizes = dict(sizes or {"train": 20000, "val": 2000, "test": 2000})
        if split not in sizes:
            raise KeyError(f"faces: sizes has no entry for split {split!r}: {sizes}")
        self.n, self.seed = split_size("faces", sizes, split), int(whole_option("faces", "seed", seed))
        self.size = int(whole_option("faces", "size", size, minimum=16))
        self.fixed = {str(k): int(whole_option("faces", f"fixed.{k}", v)) for k, v in (fixed or {}).items()}
        derive_attributes({a: np.zeros(1) for a in ATTRIBUTES}, self.fixed)  # validates names and values
        if graph is not None:
            self._check_graph(graph)
        self.workers = whole_option("faces", "workers", workers, minimum=1, optional=True)
        self.options = {
            "format_version": FORMAT_VERSION,
            "split": split,
            "n": self.n,
            "seed": self.seed,
            "size": self.size,
            "fixed": dict(sorted(self.fixed.items())),
            "scm": scm_probabilities(),
            "style_factors": list(STYLE_FACTORS),
        }
        key = hashlib.sha256(json.dumps(self.options, sort_keys=True).encode()).hexdigest()[:16]
        self.cache_dir = Path(root) / "faces" / f"{split}-{self.n}-{key}"
        images, table = self._load_or_generate()
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        self.attributes = {a: torch.from_numpy(table[a].to_numpy(np.float32)) for a in ATTRIBUTES}
        self.u = {a: table[f"u_{a}"].to_numpy(np.float32) for a in ATTRIBUTES}
        self.u["image"] = table[[f"u_image_{f}" for f in STYLE_FACTORS]].to_numpy(np.float32)

    def _check_graph(self, spec: Mapping[str, Any]) -> None:
        g = CausalGraph.from_dict(spec)
        for node, kind in g.kinds.items():
            if kind.is_image:
                if node != "image" or tuple(kind.shape) != (3, self.size, self.size):
                    raise ValueError(
                        f"faces: graph {g.name!r} image node {node!r} {list(kind.shape)} must be "
                        f"'image' with shape [3, {self.size}, {self.size}]"
                    )
            elif node not in ATTRIBUTES or kind.name != "binary":
                raise ValueError(
                    f"faces: graph {g.name!r} node {node!r} ({kind}) is not a binary faces attribute {ATTRIBUTES}"
                )

    # ----- cache -----
    def _load_or_generate(self) -> tuple[np.ndarray, pd.DataFrame]:
        d = self.cache_dir
        if (d / MANIFEST).is_file():
            try:
                arrays, table, meta = load_set(d, TABLE_FILE, MANIFEST, ["images"])
                if meta.get("options") != json.loads(json.dumps(self.options)):
                    raise CacheError(f"{d / MANIFEST} was written for other options")
                return arrays["images"], table
            except CacheError as e:
                warnings.warn(f"faces cache {d} failed its checks ({e}); regenerating", stacklevel=2)
        ensure_writable(d, "faces")
        images, table = self.generate()
        save_set(d, {"images": images}, table, {"options": self.options}, TABLE_FILE, MANIFEST, float_format="%.9g")
        arrays, table, _ = load_set(d, TABLE_FILE, MANIFEST, ["images"])  # read back: rows exactly as later loads
        return arrays["images"], table

    def generate(self) -> tuple[np.ndarray, pd.DataFrame]:
        """Draw the exogenous noise of this split, derive the attributes and render the images."""
        u = sample_exogenous(self.n, self.seed * 1000 + SPLITS.index(self.split))
        attrs = derive_attributes(u, self.fixed)
        table = pd.DataFrame({"index": np.arange(self.n)})
        for a in ATTRIBUTES:
            table[a] = attrs[a]
        for a in ATTRIBUTES:
            table[f"u_{a}"] = u[a]
        for j, f in enumerate(STYLE_FACTORS):
            table[f"u_image_{f}"] = u["image"][:, j]
        images = render_faces(
            np.stack([attrs[a] for a in ATTRIBUTES], 1),
            u["image"],
            self.size,
            self.workers,
            progress=f"faces {self.split}",
        )
        return images, table

    # ----- dataset API -----
    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {a: self.attributes[a][i].reshape(1) for a in ATTRIBUTES}
        item["image"] = self.images[i].float() / 127.5 - 1
        for a in ATTRIBUTES:
            item[f"_u_{a}"] = torch.tensor([self.u[a][i]])
        item["_u_image"] = torch.from_numpy(self.u["image"][i].copy())
        item["_index"] = torch.tensor(i)
        return item

    def true_counterfactual(self, index: Tensor, do: Mapping[str, Any]) -> dict[str, Tensor]:
        """Re-render rows `index` with their own noise under `do` (beard, bald re-derived from their u)."""
        idx = torch.as_tensor(index).long().reshape(-1).cpu().numpy()
        do_np = {k: torch.as_tensor(v).detach().cpu().numpy() for k, v in do.items() if k != "image"}
        if "image" in do:
            raise ValueError("faces: do(image) has no counterfactual to render; intervene on attributes")
        u = {a: self.u[a][idx] for a in ATTRIBUTES}
        attrs = derive_attributes(u, {**self.fixed, **do_np})
        images = render_faces(np.stack([attrs[a] for a in ATTRIBUTES], 1), self.u["image"][idx], self.size, 1)
        out = {a: torch.from_numpy(attrs[a].astype(np.float32)).reshape(-1, 1) for a in ATTRIBUTES}
        out["image"] = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        return out
