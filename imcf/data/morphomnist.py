"""Morpho-MNIST morphometrics, perturbations and the thickness/intensity SCM (numpy, scipy, scikit-image).

Definitions follow Castro et al., "Morpho-MNIST: Quantitative Assessment and Diagnostics for Representation
Learning" (JMLR 2019) and the thickness -> intensity SCM of Pawlowski et al. (NeurIPS 2020):

* an image is measured on a cubic-upscaled copy (`pyramid_expand`, order 3, default scale 4) binarised at half
  its intensity range; the skeleton is the medial axis and **thickness** is twice the mean distance-transform
  value along it, divided by the scale; **length** is the skeleton length, **area** the binary area;
  **slant**, **width** and **height** come from the image moments and the 98% bounding parallelogram;
* **intensity** is the median of the pixels at or above half the range of the image at its own resolution;
* `set_thickness` dilates / erodes the upscaled binary digit with a disk whose radius follows the requested
  change and downscales it (`pyramid_reduce`, order 3); `set_intensity` rescales so that the median
  foreground value equals the target; `swell` and `fracture` are the paper's local perturbations.

Everything works on uint8 grey images (H, W) or batches (N, H, W) with a black background, as the
Morpho-MNIST tools do; `to_uint8` converts [-1, 1] or [0, 1] float images at the edge.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage import draw, transform

from imcf.data.parallel import map_chunks

#: scale of the upscaled copy that measurements are taken on (the Morpho-MNIST default)
MEASURE_SCALE = 4
#: binarisation threshold as a fraction of the image's intensity range
THRESHOLD = 0.5
#: upscale factor of the perturbation (dilation / erosion) canvas; chosen for the time budget, see docs
DEFAULT_UPSCALE = 6
#: all measurable features; `measure_batch` computes thickness and intensity unless told otherwise
FEATURES = ("thickness", "intensity", "area", "length", "slant", "width", "height")

ValueRange = Literal["auto", "uint8", "signed", "unit"]

# ------------------------------------------------------------------ conversion


def to_uint8(images: np.ndarray, value_range: ValueRange = "auto") -> np.ndarray:
    """Convert grey images to uint8 [0, 255] (rounding), from 'uint8' [0,255], 'signed' [-1,1] or 'unit' [0,1].

    'auto' picks 'signed' when any value is negative, 'unit' when all values lie in [0, 1] and the array is
    floating point, and 'uint8' otherwise. A channel axis of size 1 ((N, 1, H, W) or (1, H, W)) is squeezed.
    """
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim not in (2, 3):
        raise ValueError(f"expected grey images (H, W), (N, H, W) or (N, 1, H, W), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if value_range == "auto":
        if x.size and float(x.min()) < 0:
            value_range = "signed"
        elif np.issubdtype(x.dtype, np.floating) and (x.size == 0 or float(x.max()) <= 1.0):
            value_range = "unit"
        else:
            value_range = "uint8"
    x = x.astype(np.float64)
    if value_range == "signed":
        x = (x + 1.0) * 127.5
    elif value_range == "unit":
        x = x * 255.0
    elif value_range != "uint8":
        raise ValueError(f"value_range must be 'auto', 'uint8', 'signed' or 'unit', got {value_range!r}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    return (images[None], True) if images.ndim == 2 else (images, False)


# ------------------------------------------------------------------ medial axis (skimage's, tables built once)


def _pattern_of(index: int) -> np.ndarray:
    return np.array([[index & 2 ** (3 * r + c) for c in range(3)] for r in range(3)], bool)


@functools.cache
def _medial_axis_tables() -> tuple[np.ndarray, np.ndarray]:
    """skimage's medial-axis lookup tables (removal and cornerness), built once instead of every call."""
    eight = np.ones((3, 3), bool)
    centre = (np.arange(512) & 2**4).astype(bool)
    changes = np.array(
        [ndi.label(_pattern_of(i), eight)[1] != ndi.label(_pattern_of(i & ~(2**4)), eight)[1] for i in range(512)]
    )
    few = np.array([_pattern_of(i).sum() < 3 for i in range(512)])
    table = np.ascontiguousarray(centre & (changes | few), dtype=np.uint8)
    cornerness = np.array([9 - _pattern_of(i).sum() for i in range(512)])
    return table, cornerness


def medial_axis(binary: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Medial axis and distance map of a binary image: `skimage.morphology.medial_axis(rng=seed)`, faster.

    The result is identical to scikit-image's (ties broken by the same seeded permutation); only the
    lookup tables are cached. Falls back to scikit-image's function if its private helpers move.
    """
    binary = np.asarray(binary, dtype=bool)
    try:
        from skimage.morphology._skeletonize import _skeletonize_loop, _table_lookup
    except ImportError:  # pragma: no cover - depends on the scikit-image version
        from skimage.morphology import medial_axis as sk_medial_axis

        return sk_medial_axis(binary, return_distance=True, rng=seed)
    table, cornerness = _medial_axis_tables()
    distance = ndi.distance_transform_edt(binary)
    corner_score = _table_lookup(binary, cornerness)
    ii, jj = np.mgrid[0 : binary.shape[0], 0 : binary.shape[1]]
    tiebreaker = np.random.default_rng(seed).permutation(np.arange(binary.sum()))
    order = np.lexsort((tiebreaker, corner_score[binary], distance[binary]))
    result = np.ascontiguousarray(binary, np.uint8)
    _skeletonize_loop(
        result,
        np.ascontiguousarray(ii[binary], dtype=np.intp),
        np.ascontiguousarray(jj[binary], dtype=np.intp),
        np.ascontiguousarray(order, dtype=np.int32),
        table,
    )
    return result.astype(bool), distance


# ------------------------------------------------------------------ the upscaled, binarised view


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Cubic pyramid upscaling of uint8 images (H, W) or (N, H, W), truncated to integer grey levels."""
    x, single = _as_batch(np.asarray(images))
    if scale == 1:
        up = x.astype(np.float64)
    else:
        # one image at a time: stacking them on a channel axis makes scipy's zoom spline over it (4x slower)
        up = np.empty((x.shape[0], x.shape[1] * scale, x.shape[2] * scale))
        for k in range(x.shape[0]):
            up[k] = transform.pyramid_expand(x[k].astype(np.float64) / 255.0, upscale=scale, order=3)
        up = np.floor(255.0 * up)
    return up[0] if single else up


def binarise(images: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Foreground mask: pixels at or above min + threshold * (max - min) of their own image."""
    x, single = _as_batch(np.asarray(images, dtype=np.float64))
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    out = x >= lo + (hi - lo) * threshold
    return out[0] if single else out


def downscale(hires: np.ndarray, scale: int) -> np.ndarray:
    """Pyramid downscaling (order 3) of an upscaled image in [0, 1] back to a uint8 image (truncated)."""
    if scale == 1:
        return np.clip(np.floor(255.0 * np.asarray(hires, np.float64)), 0, 255).astype(np.uint8)
    down = transform.pyramid_reduce(np.asarray(hires, np.float64), downscale=scale, order=3)
    return np.clip(np.floor(255.0 * down), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ measurement


def intensity(images: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Median grey value of the pixels at or above half the image's range (NaN for a blank image)."""
    x, single = _as_batch(np.asarray(images))
    x = x.astype(np.float64)
    fg = binarise(x, threshold)
    out = np.nanmedian(np.where(fg, x, np.nan), axis=(1, 2))
    out[x.max(axis=(1, 2)) == x.min(axis=(1, 2))] = np.nan  # a blank image has no foreground
    return out[0] if single else out


def _moments(img: np.ndarray) -> tuple[float, float, float, float, float]:
    """Centroid (x, y) and central second moments (u20, u11, u02) of a grey image."""
    m00 = img.sum()
    y, x = np.indices(img.shape, dtype=np.float64)
    m10, m01 = (x * img).sum() / m00, (y * img).sum() / m00
    u20 = (x * x * img).sum() / m00 - m10**2
    u11 = (x * y * img).sum() / m00 - m10 * m01
    u02 = (y * y * img).sum() / m00 - m01**2
    return m10, m01, u20, u11, u02


def _bounding_parallelogram(img: np.ndarray, frac: float) -> tuple[float, float, float, float]:
    """(left, right, top, bottom) of the sheared box holding all but `frac` of the image mass."""
    _, middle, _, u11, u02 = _moments(img)
    shear = u11 / u02
    h, w = img.shape
    y, x = np.indices(img.shape, dtype=np.float64)
    mass = img.sum()
    # horizontal CDF at integer offsets t: mass of pixels with x + .5 < t + shear * (y - middle)
    pos = (x + 0.5 - shear * (y - middle)).ravel()
    order = np.argsort(pos, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(img.ravel()[order])])
    locs = np.arange(w, dtype=np.float64)
    hcdf = cum[np.searchsorted(pos[order], locs, side="left")] / mass
    vcdf = np.concatenate([[0.0], np.cumsum(img.sum(axis=1))[:-1]]) / mass
    half = frac / 2.0
    left, right = np.interp([half, 1.0 - half], hcdf, locs)
    top, bottom = np.interp([half, 1.0 - half], vcdf, np.arange(h, dtype=np.float64))
    return left, right, top, bottom


_STROKE_MASK = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [np.sqrt(2.0), 1.0, np.sqrt(2.0)]])


def measure_batch(
    images: np.ndarray,
    value_range: ValueRange = "auto",
    features: Sequence[str] = ("thickness", "intensity"),
    scale: int = MEASURE_SCALE,
    threshold: float = THRESHOLD,
    bound_frac: float = 0.02,
) -> dict[str, np.ndarray]:
    """Morpho-MNIST measurements of a batch of grey digits: {feature: (N,) float64 array}.

    `images`: (N, H, W), (N, 1, H, W) or one (H, W) image, either uint8 / [0, 255] values
    (`value_range='uint8'`), [-1, 1] floats ('signed') or [0, 1] floats ('unit'); 'auto' guesses
    (negative values -> signed; floats within [0, 1] -> unit). Float images are rounded to uint8 first,
    like the Morpho-MNIST tools that work on uint8 MNIST. `features` is any subset of FEATURES; thickness,
    length and area are in pixels of the input, slant in radians, intensity in grey levels [0, 255].
    A blank image measures NaN.
    """
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown Morpho-MNIST feature(s) {unknown}; known: {list(FEATURES)}")
    x = to_uint8(images, value_range)
    x, _ = _as_batch(x)
    n = x.shape[0]
    out: dict[str, np.ndarray] = {}
    if "intensity" in features:
        out["intensity"] = intensity(x, threshold)
    shape_feats = [f for f in features if f != "intensity"]
    if not shape_feats or n == 0:
        for f in shape_feats:
            out[f] = np.zeros(0)
        return {f: out[f] for f in features}
    hires = upscale(x, scale)
    binary = binarise(hires, threshold)
    blank = x.reshape(n, -1).max(axis=1) == x.reshape(n, -1).min(axis=1)
    for f in shape_feats:
        out[f] = np.full(n, np.nan)
    for k in range(n):
        if blank[k]:
            continue
        if "thickness" in features or "length" in features:
            skel, dist = medial_axis(binary[k])
            if "thickness" in features:
                out["thickness"][k] = 2.0 * dist[skel].mean() / scale if skel.any() else np.nan
            if "length" in features:
                s = skel.astype(np.float64)
                conv = ndi.correlate(s, _STROKE_MASK, mode="constant")
                out["length"][k] = np.einsum("ij,ij->", conv, s) / scale
        if "area" in features:
            out["area"][k] = binary[k].sum() / scale**2
        if "slant" in features:
            _, _, _, u11, u02 = _moments(hires[k])
            out["slant"][k] = np.arctan(-u11 / u02)
        if "width" in features or "height" in features:
            left, right, top, bottom = _bounding_parallelogram(hires[k], bound_frac)
            if "width" in features:
                out["width"][k] = (right - left) / scale
            if "height" in features:
                out["height"][k] = (bottom - top) / scale
    return {f: out[f] for f in features}


def measure_image(image: np.ndarray, value_range: ValueRange = "auto", **kwargs) -> dict[str, float]:
    """All Morpho-MNIST features of one grey image as floats (see `measure_batch`)."""
    res = measure_batch(
        np.asarray(image)[None] if np.asarray(image).ndim == 2 else image,
        value_range,
        features=kwargs.pop("features", FEATURES),
        **kwargs,
    )
    return {k: float(v[0]) for k, v in res.items()}


# ------------------------------------------------------------------ perturbations


class Morphology:
    """An uint8 digit with its binarised upscaled copy; distance maps for dilation/erosion are made lazily."""

    def __init__(self, image: np.ndarray, scale: int = DEFAULT_UPSCALE, threshold: float = THRESHOLD) -> None:
        self.image = to_uint8(image)
        if self.image.ndim != 2:
            raise ValueError(f"Morphology takes one (H, W) image, got shape {self.image.shape}")
        self.scale = int(scale)
        self.threshold = threshold
        self.hires = upscale(self.image, self.scale)
        self.binary = binarise(self.hires, threshold)

    @functools.cached_property
    def inside_distance(self) -> np.ndarray:
        """Distance of each foreground pixel to the nearest background pixel (0 outside)."""
        return ndi.distance_transform_edt(self.binary)

    @functools.cached_property
    def outside_distance(self) -> np.ndarray:
        """Distance of each background pixel to the nearest foreground pixel (0 inside)."""
        if not self.binary.any():
            return np.full(self.binary.shape, np.inf)
        return ndi.distance_transform_edt(~self.binary)

    @functools.cached_property
    def skeleton(self) -> np.ndarray:
        """Medial axis of the upscaled binary digit."""
        return medial_axis(self.binary)[0]

    @functools.cached_property
    def mean_thickness(self) -> float:
        """Thickness measured on this upscaled canvas, in pixels of the input image."""
        return 2.0 * float(self.inside_distance[self.skeleton].mean()) / self.scale

    def morph(self, radius: float) -> np.ndarray:
        """Dilation (radius > 0) or erosion (radius < 0) of the binary canvas with a disk of |radius| pixels.

        A pixel joins under dilation when a foreground pixel lies within the disk around it (distance
        <= radius) and survives erosion when the whole disk is foreground (distance to background > |radius|).
        """
        if radius >= 0:
            return self.outside_distance <= radius
        return self.inside_distance > -radius

    def downscale(self, hires: np.ndarray) -> np.ndarray:
        """Back to the input resolution as uint8."""
        return downscale(hires.astype(np.float64), self.scale)


def fit_thickness(
    image: np.ndarray,
    target: float,
    upscale_factor: int = DEFAULT_UPSCALE,
    iterations: int = 6,
    tolerance: float = 0.03,
) -> tuple[np.ndarray, float]:
    """`set_thickness` that also returns the thickness its output measures (at MEASURE_SCALE).

    The disk radius starts at the requested change, (target - measured) / 2 in upscaled pixels. Downscaling
    blurs edges and closing loops or breaking strokes changes the skeleton, so one fixed radius over- or
    undershoots: the radius is refined from the measurement of each downscaled result (secant steps inside
    a bracket, bisection when a step leaves it), and the best of `iterations` tries is kept.
    """
    morph = Morphology(image, upscale_factor)
    if not morph.binary.any() or morph.binary.all():
        return morph.image.copy(), float("nan")
    current = float(measure_batch(morph.image[None], "uint8", ("thickness",))["thickness"][0])
    nominal = 2.0 / upscale_factor  # thickness gained per upscaled pixel of radius, ideally
    lo: tuple[float, float] | None = None  # (radius, thickness) measuring below the target
    hi: tuple[float, float] | None = None  # ... and above it
    best: tuple[float, np.ndarray, float] | None = None
    radius = (target - current) / nominal
    seen: set[float] = set()
    for _ in range(max(1, iterations)):
        out = morph.downscale(morph.morph(radius))
        got = float(measure_batch(out[None], "uint8", ("thickness",))["thickness"][0])
        err = abs(got - target) if np.isfinite(got) else np.inf
        if best is None or err < best[0]:
            best = (err, out, got)
        if err <= tolerance:
            break
        seen.add(round(radius, 3))
        if not np.isfinite(got) or got < target:
            lo = (radius, got if np.isfinite(got) else 0.0) if lo is None or radius > lo[0] else lo
        else:
            hi = (radius, got) if hi is None or radius < hi[0] else hi
        if lo is not None and hi is not None:
            slope = (hi[1] - lo[1]) / max(hi[0] - lo[0], 1e-6)
            step = lo[0] + (target - lo[1]) / max(slope, 0.25 * nominal)
            # secant inside the bracket; bisect when it lands on an edge or a radius already tried
            if not lo[0] < step < hi[0] or round(step, 3) in seen:
                step = 0.5 * (lo[0] + hi[0])
            radius = step
        else:
            radius = radius + (target - (got if np.isfinite(got) else 0.0)) / nominal
        if round(radius, 3) in seen:
            break
    assert best is not None
    return best[1], float(best[2])


def set_thickness(image: np.ndarray, target: float, upscale_factor: int = DEFAULT_UPSCALE) -> np.ndarray:
    """Dilate or erode a uint8 digit so that its measured thickness becomes `target` pixels."""
    return fit_thickness(image, target, upscale_factor)[0]


def set_intensity(image: np.ndarray, target: float, iterations: int = 3) -> np.ndarray:
    """Rescale a uint8 digit so that its median foreground grey value equals `target` (clipped to 255).

    Rounding and clipping can move the foreground set; the factor is corrected a few times on the result.
    """
    x = to_uint8(image).astype(np.float64)
    current = float(intensity(x))
    if not np.isfinite(current) or current <= 0:
        return to_uint8(x, "uint8")
    factor = target / current
    best: tuple[float, np.ndarray] | None = None
    for _ in range(max(1, iterations)):
        out = np.clip(np.rint(x * factor), 0, 255).astype(np.uint8)
        got = float(intensity(out))
        err = abs(got - target)
        if best is None or err < best[0]:
            best = (err, out)
        if err <= 0.5 or got <= 0:
            break
        factor *= target / got
    assert best is not None
    return best[1]


def thin(image: np.ndarray, amount: float = 0.7, upscale_factor: int = DEFAULT_UPSCALE) -> np.ndarray:
    """The paper's thinning: erode by a disk of radius amount * thickness / 2."""
    morph = Morphology(image, upscale_factor)
    radius = int(amount * morph.scale * morph.mean_thickness / 2.0)
    return morph.downscale(morph.morph(-radius))


def thicken(image: np.ndarray, amount: float = 1.0, upscale_factor: int = DEFAULT_UPSCALE) -> np.ndarray:
    """The paper's thickening: dilate by a disk of radius amount * thickness / 2."""
    morph = Morphology(image, upscale_factor)
    radius = int(amount * morph.scale * morph.mean_thickness / 2.0)
    return morph.downscale(morph.morph(radius))


_NEIGHBOURS = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]])


def _erase_around(skel: np.ndarray, seeds: np.ndarray, r: int) -> np.ndarray:
    """Remove skeleton pixels within a disk of radius r around each seed pixel."""
    if r <= 0 or not seeds.any():
        return skel.copy()
    near = ndi.distance_transform_edt(~seeds) <= r
    return skel & ~near


def _sample_skeleton_location(
    morph: Morphology, rng: np.random.Generator, num: int, prune_tips: float | None, prune_forks: float | None
) -> np.ndarray:
    skel = morph.skeleton
    if prune_tips is not None:
        nb = ndi.convolve(skel.astype(int), _NEIGHBOURS, mode="constant") * skel
        skel = _erase_around(skel, nb == 1, int(prune_tips * morph.scale))
    if prune_forks is not None:
        nb = ndi.convolve(skel.astype(int), _NEIGHBOURS, mode="constant") * skel
        skel = _erase_around(skel, nb == 3, int(prune_forks * morph.scale))
    coords = np.argwhere(skel)
    if coords.shape[0] == 0:
        raise ValueError("over-pruned skeleton: no location left to perturb")
    return coords[rng.integers(coords.shape[0], size=num)]


def swell(
    image: np.ndarray,
    strength: float = 3.0,
    radius: float = 7.0,
    rng: np.random.Generator | int | None = None,
    upscale_factor: int = DEFAULT_UPSCALE,
) -> np.ndarray:
    """The paper's swelling: a radial warp around a random skeleton point, radius scaled by sqrt(thickness)."""
    rng = np.random.default_rng(rng)
    morph = Morphology(image, upscale_factor)
    if not morph.binary.any():
        return morph.image.copy()
    centre = _sample_skeleton_location(morph, rng, 1, None, None)[0][::-1].astype(np.float64)  # (x, y)
    r = (radius * np.sqrt(morph.mean_thickness) / 2.0) * morph.scale

    def inverse_map(xy: np.ndarray) -> np.ndarray:
        offset = xy - centre
        dist = np.hypot(offset[:, 0], offset[:, 1])
        with np.errstate(divide="ignore"):
            weight = (dist / r) ** (strength - 1.0)
        weight[dist > r] = 1.0
        return centre + weight[:, None] * offset

    warped = transform.warp(morph.binary.astype(np.float64), inverse_map)
    return morph.downscale(warped)


def fracture(
    image: np.ndarray,
    thickness: float = 1.5,
    prune: float = 2.0,
    num_frac: int = 3,
    rng: np.random.Generator | int | None = None,
    upscale_factor: int = DEFAULT_UPSCALE,
) -> np.ndarray:
    """The paper's fracture: cut `num_frac` gaps of width `thickness` across the stroke, away from tips/forks."""
    rng = np.random.default_rng(rng)
    morph = Morphology(image, upscale_factor)
    if not morph.binary.any():
        return morph.image.copy()
    up_thickness = thickness * morph.scale
    r = int(np.ceil((up_thickness - 1) / 2))
    brush = ~_disk(r)
    frac = np.pad(morph.binary, r, constant_values=False)
    try:
        centres = _sample_skeleton_location(morph, rng, num_frac, prune, prune)
    except ValueError:  # the skeleton vanished with pruning: sample without it
        centres = _sample_skeleton_location(morph, rng, num_frac, None, None)
    window = 2 * morph.scale
    skel = np.pad(morph.skeleton, window).astype(np.float64)
    for ci, cj in centres:
        nbs = skel[ci : ci + 2 * window + 1, cj : cj + 2 * window + 1]
        _, _, u20, u11, u02 = _moments(nbs)
        angle = 0.5 * np.arctan2(2.0 * u11, u20 - u02) + np.pi / 2.0  # perpendicular to the stroke
        length = morph.inside_distance[ci, cj] + 0.5 * morph.scale
        normal = length * np.array([np.sin(angle), np.cos(angle)])
        p0 = (np.array([ci, cj]) + normal).astype(int)
        p1 = (np.array([ci, cj]) - normal).astype(int)
        h, w = brush.shape
        for i, j in zip(*draw.line(*p0, *p1)):
            if 0 <= i <= frac.shape[0] - h and 0 <= j <= frac.shape[1] - w:
                frac[i : i + h, j : j + w] &= brush
    out = frac[r:-r, r:-r] if r > 0 else frac
    return morph.downscale(out)


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


# ------------------------------------------------------------------ the true SCM (Pawlowski et al. 2020)

#: thickness t = 0.5 + u_t with u_t ~ Gamma(shape, rate)
THICKNESS_SHIFT, THICKNESS_GAMMA_SHAPE, THICKNESS_GAMMA_RATE = 0.5, 10.0, 5.0
#: intensity i = 64 + 191 * sigmoid(0.5 * u_i + 2 * t - 5) with u_i ~ N(0, 1)
INTENSITY_LOW, INTENSITY_RANGE = 64.0, 191.0


def sample_noise(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Exogenous noise of n units: u_thickness ~ Gamma(10, rate 5), u_intensity ~ N(0, 1)."""
    u_t = rng.gamma(THICKNESS_GAMMA_SHAPE, 1.0 / THICKNESS_GAMMA_RATE, size=n)
    u_i = rng.standard_normal(n)
    return {"thickness": u_t, "intensity": u_i}


def thickness_mechanism(u_thickness: np.ndarray) -> np.ndarray:
    """t = 0.5 + u_t."""
    return THICKNESS_SHIFT + np.asarray(u_thickness, np.float64)


def intensity_mechanism(thickness: np.ndarray, u_intensity: np.ndarray) -> np.ndarray:
    """i = 64 + 191 * sigmoid(0.5 * u_i + 2 * t - 5)."""
    z = 0.5 * np.asarray(u_intensity, np.float64) + 2.0 * np.asarray(thickness, np.float64) - 5.0
    return INTENSITY_LOW + INTENSITY_RANGE / (1.0 + np.exp(-z))


def intensity_noise(thickness: np.ndarray, intensity_value: np.ndarray) -> np.ndarray:
    """Abduction of u_i from (t, i): the inverse of `intensity_mechanism`."""
    p = (np.asarray(intensity_value, np.float64) - INTENSITY_LOW) / INTENSITY_RANGE
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return (np.log(p) - np.log1p(-p) + 5.0 - 2.0 * np.asarray(thickness, np.float64)) / 0.5


def render_digit(
    base: np.ndarray, thickness: float, intensity_value: float, upscale_factor: int = DEFAULT_UPSCALE
) -> tuple[np.ndarray, np.ndarray]:
    """The image mechanism: (set_intensity(set_thickness(base, t), i), set_thickness(base, t)) as uint8."""
    thick = set_thickness(base, float(thickness), upscale_factor)
    return set_intensity(thick, float(intensity_value)), thick


def _render_chunk(args: tuple) -> dict[str, np.ndarray]:
    bases, thick_images, ts, is_, up = args
    finals = np.empty_like(bases)
    thicks = np.empty_like(bases) if thick_images is None else thick_images
    for k in range(bases.shape[0]):
        if thick_images is None:
            finals[k], thicks[k] = render_digit(bases[k], ts[k], is_[k], up)
        else:  # thickness unchanged: only the intensity step is redone
            finals[k] = set_intensity(thicks[k], is_[k])
    measured = measure_batch(finals, "uint8", ("thickness", "intensity"))
    return {
        "image": finals,
        "thick_image": thicks,
        "measured_thickness": measured["thickness"],
        "measured_intensity": measured["intensity"],
    }


def default_workers() -> int:
    """Worker processes used when none are given: the run's thread plan (imcf.threads), at most 8."""
    from imcf.threads import generation_processes  # here, not above: the spawned workers import this module, not torch

    return max(1, min(8, generation_processes()))


def render_batch(
    bases: np.ndarray,
    thickness: Iterable[float],
    intensity_value: Iterable[float],
    upscale_factor: int = DEFAULT_UPSCALE,
    workers: int | None = None,
    thick_images: np.ndarray | None = None,
    progress: str | None = None,
) -> dict[str, np.ndarray]:
    """The image mechanism over a batch of uint8 bases (N, H, W), with the measurements of the results.
    `progress`: a label; when given, a line `[imcf] <label>: rendered k/N digits` is printed as chunks finish.

    Returns {"image": final uint8 images, "thick_image": after set_thickness only, "measured_thickness",
    "measured_intensity"}. Given `thick_images` (the thickness step already done, e.g. when only intensity
    changes) only the intensity step runs. With `workers` > 1 the batch is split over a process pool.
    """
    bases = np.ascontiguousarray(to_uint8(bases, "uint8"))
    ts = np.asarray(list(thickness), np.float64).reshape(-1)
    is_ = np.asarray(list(intensity_value), np.float64).reshape(-1)
    n = bases.shape[0]
    if ts.shape[0] != n or is_.shape[0] != n:
        raise ValueError(f"render_batch: {n} bases but {ts.shape[0]} thickness and {is_.shape[0]} intensity values")
    if thick_images is not None:
        thick_images = np.ascontiguousarray(to_uint8(thick_images, "uint8")).copy()
        if thick_images.shape != bases.shape:
            raise ValueError(f"render_batch: thick_images shape {thick_images.shape} != bases shape {bases.shape}")
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, n // 16))
    bounds = np.linspace(0, n, (min(n, workers * 8) if workers > 1 else 1) + 1).astype(int)
    chunks = [
        (bases[a:b], None if thick_images is None else thick_images[a:b], ts[a:b], is_[a:b], upscale_factor)
        for a, b in zip(bounds[:-1], bounds[1:])
        if b > a
    ] or [(bases, thick_images, ts, is_, upscale_factor)]  # an empty batch: one empty chunk, empty results
    sizes = [len(c[0]) for c in chunks]
    parts = map_chunks(_render_chunk, chunks, sizes, workers, progress, "digits")
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def pad_to(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Zero-pad (N, H, W) digits symmetrically to (N, size, size)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    pad = [(0, 0)] * (images.ndim - 2) + [(top, size - h - top), (left, size - w - left)]
    return np.pad(images, pad)


__all__ = [
    "FEATURES",
    "MEASURE_SCALE",
    "DEFAULT_UPSCALE",
    "Morphology",
    "fit_thickness",
    "fracture",
    "intensity",
    "intensity_mechanism",
    "intensity_noise",
    "measure_batch",
    "measure_image",
    "medial_axis",
    "pad_to",
    "render_batch",
    "render_digit",
    "sample_noise",
    "set_intensity",
    "set_thickness",
    "swell",
    "thicken",
    "thickness_mechanism",
    "thin",
    "to_uint8",
]
