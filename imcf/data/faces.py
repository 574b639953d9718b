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

import colorsys
import functools
import hashlib
import io
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from imcf.data.base import SPLITS, CausalDataset
from imcf.data.cache import CacheError, load_set, save_set
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
#: the continuous style factors in u_image (each Uniform(0, 1)), in order
STYLE_FACTORS = (
    "skin_tone",
    "face_width",
    "face_height",
    "jaw",
    "eye_spacing",
    "eye_size",
    "eye_colour",
    "hair_colour",
    "hair_length",
    "mouth_width",
    "background_hue",
    "background_hue2",
    "background_angle",
    "offset_x",
    "offset_y",
    "yaw",
    "light_angle",
    "light_strength",
    "brightness",
    "shirt_hue",
    "frame_colour",
)
#: bump when the renderer or the SCM changes, so old caches are not reused
FORMAT_VERSION = 1

_ROOT_PROB = {"young": P_YOUNG, "male": P_MALE, "smiling": P_SMILING, "eyeglasses": P_EYEGLASSES}
_CHILD_PROB = {"beard": BEARD_PROB, "bald": BALD_PROB}
_SKIN = np.array([(250, 222, 200), (238, 194, 160), (205, 155, 115), (160, 108, 75), (112, 74, 52)], float)
_HAIR = np.array([(28, 22, 20), (72, 46, 30), (122, 80, 46), (160, 78, 38), (218, 184, 112)], float)
_IRIS = np.array([(60, 40, 25), (90, 120, 60), (60, 100, 160), (110, 80, 50)], float)
_FRAME = np.array([(15, 15, 18), (70, 35, 20), (20, 30, 90), (100, 15, 25)], float)


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
# rendering
# ----------------------------------------------------------------------------------------------------------
def _lerp_palette(palette: np.ndarray, t: float) -> np.ndarray:
    x = t * (len(palette) - 1)
    i = min(int(x), len(palette) - 2)
    return palette[i] * (1 - (x - i)) + palette[i + 1] * (x - i)


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(float(v)))) for v in c)
    return r, g, b


def _contrast(c: np.ndarray, ref: np.ndarray, gap: float) -> np.ndarray:
    """Scale colour `c` so its luminance differs from `ref`'s by at least `gap` (keeps the hue)."""
    lum = np.array([0.299, 0.587, 0.114])
    lc, lr = float(c @ lum), float(ref @ lum)
    if abs(lc - lr) >= gap:
        return c
    up_ok, down_ok = lr + gap <= 235, lr - gap >= 20
    target = lr + gap if (up_ok and (lc >= lr or not down_ok)) else lr - gap
    if target < lc:
        return c * (target / max(lc, 1.0))
    return c + (255 - c) * (target - lc) / max(255 - lc, 1.0)


@functools.cache
def _grid(n: int) -> np.ndarray:
    """Pixel centres in [-1, 1] (float32)."""
    return (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255


def render_face(attributes: Mapping[str, int], style: np.ndarray, size: int = 64) -> np.ndarray:
    """Draw one face: (size, size, 3) uint8. Deterministic in (attributes, style)."""
    st = dict(zip(STYLE_FACTORS, (float(v) for v in style)))
    young, male, beard, bald, smiling, glasses = (int(attributes[a]) for a in ATTRIBUTES)
    canvas = 2 * size  # drawn at twice the size, then box-downsampled (anti-aliasing)
    s = canvas / 128.0  # the geometry below is in units of a 128-pixel canvas

    # background: a linear gradient between two colours
    ang = st["background_angle"] * 2 * np.pi
    c1 = _hsv(st["background_hue"], 0.45, 0.85)
    c2 = _hsv(st["background_hue2"], 0.55, 0.45 + 0.4 * st["background_hue"])
    grid = _grid(canvas)
    t = np.add.outer(np.float32(0.5 * np.sin(ang)) * grid, np.float32(0.5 * np.cos(ang)) * grid) + np.float32(0.5)
    bg = c1.astype(np.float32) + t[..., None] * (c2 - c1).astype(np.float32)
    im = Image.fromarray(bg.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)

    skin = _lerp_palette(_SKIN, st["skin_tone"])
    if young:
        hair = _lerp_palette(_HAIR, st["hair_colour"])
    else:  # grey to white hair
        hair = np.full(3, 150 + 80 * st["hair_colour"]) + np.array([4, 2, 0])
    hair = _contrast(hair, skin, 45)  # hair, bald crown and beard stay visible on every skin tone
    skin_c, shade_c, dark_c = _rgb(skin), _rgb(skin * 0.86), _rgb(skin * 0.62)
    hair_c = _rgb(hair)
    brow_c = _rgb(hair * 0.7 if young else hair * 0.8)
    beard_c = _rgb(_contrast(hair * 0.82, skin, 65))

    cx = 64 + 8 * (2 * st["offset_x"] - 1)
    cy = 60 + 6 * (2 * st["offset_y"] - 1)
    a = 27 + 7 * st["face_width"]
    b = 36 + 7 * st["face_height"]
    fx = cx + 4 * (2 * st["yaw"] - 1)  # inner features shift with a small head turn

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (x0 * s, y0 * s, x1 * s, y1 * s)

    def w(px: float) -> int:
        return max(1, round(px * s))

    # long hair behind the head and shoulders (women), shoulders, neck
    if not male:
        length = b * (0.5 + 0.6 * st["hair_length"])
        d.rounded_rectangle(box(cx - a - 8, cy - b * 0.4, cx + a + 8, cy + length + 12), 14 * s, fill=hair_c)
    shirt = _rgb(_hsv(st["shirt_hue"], 0.6, 0.7))
    d.ellipse(box(cx - 54, cy + b + 6, cx + 54, cy + b + 80), fill=shirt)
    d.rectangle(box(cx - 12, cy + b - 16, cx + 12, cy + b + 14), fill=shade_c)
    if not bald:  # hair volume around the crown
        grow = 4 if male else 7
        d.ellipse(box(cx - a - grow, cy - b - grow - 2, cx + a + grow, cy + b * 0.3), fill=hair_c)
    for side in (-1, 1):  # ears
        d.ellipse(box(cx + side * a - 5, cy - 10, cx + side * a + 5, cy + 8), fill=shade_c)

    # face: oval for women, square jaw for men
    if male:
        d.ellipse(box(cx - a, cy - b, cx + a, cy + b * 0.8), fill=skin_c)
        d.rounded_rectangle(box(cx - a, cy - 4, cx + a, cy + b), (4 + 10 * st["jaw"]) * s, fill=skin_c)
    else:
        d.ellipse(box(cx - a, cy - b, cx + a, cy + b), fill=skin_c)

    if bald:  # shiny crown, hair only at the sides
        d.ellipse(box(fx - a * 0.45, cy - b + 4, fx - a * 0.05, cy - b + 13), fill=_rgb(skin * 1.1 + 12))
        for side in (-1, 1):
            d.ellipse(box(cx + side * (a - 1) - 5, cy - b * 0.45, cx + side * (a - 1) + 5, cy + 4), fill=hair_c)
    else:  # fringe over the top of the forehead
        fringe = b * (0.36 if male else 0.42)
        d.chord(box(cx - a - 1, cy - b - 1, cx + a + 1, cy - b + 2 * fringe), 180, 360, fill=hair_c)
        if not male:  # side locks framing the face
            for side in (-1, 1):
                x0 = cx + side * (a - 3)
                d.ellipse(box(x0 - 5, cy - b * 0.6, x0 + 5, cy + b * 0.35), fill=hair_c)

    # eyes and eyebrows
    sp = 11 + 6 * st["eye_spacing"]
    ey = cy - b * 0.12
    re = 3.5 + 1.5 * st["eye_size"]
    iris = _rgb(_lerp_palette(_IRIS, st["eye_colour"]))
    for side in (-1, 1):
        ex = fx + side * sp
        d.line(
            [(s * (ex - 7), s * (ey - re - 4 + side * 0)), (s * (ex + 7), s * (ey - re - 5))],
            fill=brow_c,
            width=w(4 if male else 2),
        )
        d.ellipse(box(ex - re - 2, ey - re, ex + re + 2, ey + re), fill=(245, 245, 242))
        d.ellipse(box(ex - re * 0.75, ey - re * 0.75, ex + re * 0.75, ey + re * 0.75), fill=iris)
        d.ellipse(box(ex - re * 0.35, ey - re * 0.35, ex + re * 0.35, ey + re * 0.35), fill=(10, 10, 10))
    # nose
    ny = cy + b * 0.28
    d.line([(s * fx, s * (ey + 3)), (s * (fx - 3), s * ny), (s * (fx + 3), s * ny)], fill=dark_c, width=w(2))

    my = cy + b * 0.56
    mw = 9 + 5 * st["mouth_width"]
    if not young:  # wrinkles: forehead lines, eye bags, nasolabial folds
        for k in (0, 1):
            yk = cy - b * 0.45 + 4 * k
            d.arc(box(fx - 12, yk - 3, fx + 12, yk + 5), 200, 340, fill=dark_c, width=w(2))
        for side in (-1, 1):
            ex = fx + side * sp
            d.arc(box(ex - re - 1, ey, ex + re + 1, ey + re + 5), 20, 160, fill=dark_c, width=w(2))
            d.line(
                [(s * (fx + side * 6), s * (ny - 1)), (s * (fx + side * (mw + 3)), s * (my + 3))],
                fill=dark_c,
                width=w(2),
            )
    if beard:  # full beard over the jaw, sideburns and a moustache
        d.chord(box(cx - a - 1, cy - b * 0.55, cx + a + 1, cy + b + 4), 8, 172, fill=beard_c)
        for side in (-1, 1):
            d.rectangle(
                box(cx + side * a - 5 * (side > 0) - 1, cy - 6, cx + side * a + 5 * (side < 0) + 1, cy + b * 0.5),
                fill=beard_c,
            )
        d.ellipse(box(fx - mw - 4, my - 9, fx + mw + 4, my + 1), fill=beard_c)
    lips = _rgb(np.array([190, 60, 70]) if not male else skin * 0.55)
    if smiling:  # open smile with teeth
        d.chord(box(fx - mw, my - 10, fx + mw, my + 10), 0, 180, fill=(110, 25, 35))
        d.chord(box(fx - mw + 2, my - 6, fx + mw - 2, my + 5), 0, 180, fill=(250, 250, 250))
        d.arc(box(fx - mw, my - 10, fx + mw, my + 10), 0, 180, fill=lips, width=w(2))
        d.line([(s * (fx - mw), s * my), (s * (fx + mw), s * my)], fill=lips, width=w(2))
    else:  # closed, straight mouth
        d.line([(s * (fx - mw * 0.65), s * (my + 2)), (s * (fx + mw * 0.65), s * (my + 2))], fill=lips, width=w(3))
    if glasses:  # thick frames, bridge, arms, and a glare on each lens
        frame = _rgb(_lerp_palette(_FRAME, st["frame_colour"]))
        r = re + 6
        for side in (-1, 1):
            ex = fx + side * sp
            d.rounded_rectangle(box(ex - r, ey - r * 0.8, ex + r, ey + r * 0.8), 4 * s, outline=frame, width=w(3))
            d.line(
                [(s * (ex - r * 0.5), s * (ey + 2)), (s * (ex - 1), s * (ey - r * 0.5))],
                fill=(235, 240, 250),
                width=w(2),
            )
            d.line([(s * (ex + side * r), s * (ey - 2)), (s * (cx + side * a), s * (ey - 3))], fill=frame, width=w(3))
        d.line([(s * (fx - sp + r), s * (ey - 1)), (s * (fx + sp - r), s * (ey - 1))], fill=frame, width=w(3))

    # downsample, then directional lighting and overall brightness
    out = np.asarray(im.reduce(2), dtype=np.float32)
    la = st["light_angle"] * 2 * np.pi
    g = _grid(size)
    k = 0.3 * st["light_strength"] * (0.85 + 0.25 * st["brightness"])
    light = np.add.outer(np.float32(k * np.sin(la)) * g, np.float32(k * np.cos(la)) * g)
    light += np.float32(0.85 + 0.25 * st["brightness"])
    out *= light[..., None]
    np.clip(out, 0, 255, out=out)
    return np.rint(out, out=out).astype(np.uint8)


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
        self.n, self.seed, self.size = int(sizes[split]), int(seed), int(size)
        if self.size < 16:
            raise ValueError(f"faces: size must be >= 16, got {size}")
        self.fixed = {str(k): int(v) for k, v in (fixed or {}).items()}
        derive_attributes({a: np.zeros(1) for a in ATTRIBUTES}, self.fixed)  # validates names and values
        if graph is not None:
            self._check_graph(graph)
        self.workers = workers
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
