"""Morpho-MNIST morphometrics (Castro et al., JMLR 2019), numpy / scipy / scikit-image.

* an image is measured on a cubic-upscaled copy (`pyramid_expand`, order 3, default scale 4) binarised at half
  its intensity range; the skeleton is the medial axis and **thickness** is twice the mean distance-transform
  value along it, divided by the scale; **length** is the skeleton length, **area** the binary area;
  **slant**, **width** and **height** come from the image moments and the 98% bounding parallelogram;
* **intensity** is the median of the pixels at or above half the range of the image at its own resolution.

Everything works on uint8 grey images (H, W) or batches (N, H, W) with a black background, as the
Morpho-MNIST tools do; `to_uint8` converts [-1, 1] or [0, 1] float images at the edge.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from skimage import transform
from threadpoolctl import ThreadpoolController

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


def _foreground_box(binary: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of the foreground grown by one background pixel on each side (within the image)."""
    rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
    h, w = binary.shape
    return slice(max(rows[0] - 1, 0), min(rows[-1] + 2, h)), slice(max(cols[0] - 1, 0), min(cols[-1] + 2, w))


def medial_axis(binary: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Medial axis and distance map of a binary image: `skimage.morphology.medial_axis(rng=seed)`, faster.

    The result is identical to scikit-image's (ties broken by the same seeded permutation). Faster because
    the lookup tables are cached and the work is done on the foreground's box grown by one pixel: every
    foreground pixel's nearest background pixel lies in that box (moving a point outside the box onto its
    border brings it closer) and the raster order, hence the tie-breaking, is unchanged. Falls back to
    scikit-image's function if its private helpers move.
    """
    binary = np.asarray(binary, dtype=bool)
    try:
        from skimage.morphology._skeletonize import _skeletonize_loop, _table_lookup
    except ImportError:  # pragma: no cover - depends on the scikit-image version
        from skimage.morphology import medial_axis as sk_medial_axis

        return sk_medial_axis(binary, return_distance=True, rng=seed)
    skeleton = np.zeros(binary.shape, bool)
    distance = np.zeros(binary.shape)
    if not binary.any():
        return skeleton, distance
    box = _foreground_box(binary)
    crop = binary[box]
    table, cornerness = _medial_axis_tables()
    dist = ndi.distance_transform_edt(crop)
    corner_score = _table_lookup(crop, cornerness)
    ii, jj = np.mgrid[0 : crop.shape[0], 0 : crop.shape[1]]
    tiebreaker = np.random.default_rng(seed).permutation(np.arange(crop.sum()))
    order = np.lexsort((tiebreaker, corner_score[crop], dist[crop]))
    result = np.ascontiguousarray(crop, np.uint8)
    _skeletonize_loop(
        result,
        np.ascontiguousarray(ii[crop], dtype=np.intp),
        np.ascontiguousarray(jj[crop], dtype=np.intp),
        np.ascontiguousarray(order, dtype=np.int32),
        table,
    )
    skeleton[box] = result.astype(bool)
    distance[box] = dist
    return skeleton, distance


# ------------------------------------------------------------------ the upscaled, binarised view


@functools.cache
def _zoom_matrix(size: int, out_size: int) -> np.ndarray:
    """(out_size, size) matrix of scikit-image's cubic `resize` along one axis (reflect mode, no clipping).

    The spline zoom is separable, so resizing an (H, W) image is `R @ x @ C.T`; each matrix is read off
    scikit-image itself by resizing the identity along its first axis only, so it cannot drift from it.
    """
    eye = np.eye(size)
    return transform.resize(eye, (out_size, size), order=3, mode="reflect", anti_aliasing=False, clip=False)


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _resize_clipped(x: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """`skimage.transform.resize(order=3, mode='reflect', anti_aliasing=False)` of each (H, W) image of a stack.

    The products run on one BLAS thread: they are small, and a second BLAS thread would spin after each of them,
    taking a core from torch's threads (or from the other rendering processes)."""
    rows = _zoom_matrix(x.shape[1], out_shape[0])
    cols = _zoom_matrix(x.shape[2], out_shape[1])
    with _blas().limit(limits=1, user_api="blas"):
        out = rows @ x @ cols.T
    return np.clip(out, x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True), out=out)


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """scikit-image's pyramid smoothing (`gaussian`, reflect mode) of each image of an (N, H, W) stack."""
    return ndi.gaussian_filter(x, (0.0, sigma, sigma), mode="reflect", truncate=4.0)


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Cubic pyramid upscaling of uint8 images (H, W) or (N, H, W), truncated to integer grey levels.

    Equal to `floor(255 * skimage.transform.pyramid_expand(x / 255, scale, order=3))` per image (to
    ~1e-15 before the floor), computed for the whole batch as separable matrix products.
    """
    x, single = _as_batch(np.asarray(images))
    if scale == 1:
        up = x.astype(np.float64)
    else:
        up = _resize_clipped(x.astype(np.float64) / 255.0, (x.shape[1] * scale, x.shape[2] * scale))
        up = np.floor(255.0 * _smooth(up, 2.0 * scale / 6.0))
    return up[0] if single else up


def binarise(images: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Foreground mask: pixels at or above min + threshold * (max - min) of their own image."""
    x, single = _as_batch(np.asarray(images, dtype=np.float64))
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    out = x >= lo + (hi - lo) * threshold
    return out[0] if single else out


def downscale(hires: np.ndarray, scale: int) -> np.ndarray:
    """Pyramid downscaling (order 3) of upscaled images in [0, 1], (H, W) or (N, H, W), to uint8 (truncated).

    Equal to `skimage.transform.pyramid_reduce(hires, scale, order=3)` per image (to ~1e-15 before the
    floor, which can move a pixel that lands exactly on a grey level by one level), batched.
    """
    x, single = _as_batch(np.asarray(hires, np.float64))
    if scale == 1:
        down = x
    else:
        down = _resize_clipped(_smooth(x, 2.0 * scale / 6.0), (-(-x.shape[1] // scale), -(-x.shape[2] // scale)))
    out = np.clip(np.floor(255.0 * down), 0, 255).astype(np.uint8)
    return out[0] if single else out


# ------------------------------------------------------------------ measurement


def intensity(images: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Median grey value of the pixels at or above half the image's range (NaN for a blank image)."""
    x, single = _as_batch(np.asarray(images))
    x = x.astype(np.float64)
    fg = binarise(x, threshold)
    out = np.nanmedian(np.where(fg, x, np.nan), axis=(1, 2))
    out[x.max(axis=(1, 2)) == x.min(axis=(1, 2))] = np.nan  # a blank image has no foreground
    return out[0] if single else out


def image_moments(img: np.ndarray) -> tuple[float, float, float, float, float]:
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
    _, middle, _, u11, u02 = image_moments(img)
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
            _, _, _, u11, u02 = image_moments(hires[k])
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
