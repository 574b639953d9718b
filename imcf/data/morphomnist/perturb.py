"""Morpho-MNIST perturbations (Castro et al., JMLR 2019): `set_thickness` dilates / erodes the upscaled binary
digit with a disk whose radius follows the requested change and downscales it (`pyramid_reduce`, order 3);
`set_intensity` rescales so that the median foreground value equals the target; `thin`, `thicken`, and the
local `swell` and `fracture`."""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi
from skimage import draw, transform

from imcf.data.morphomnist.measure import (
    DEFAULT_UPSCALE,
    THRESHOLD,
    binarise,
    downscale,
    image_moments,
    intensity,
    measure_batch,
    medial_axis,
    to_uint8,
    upscale,
)

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
        _, _, u20, u11, u02 = image_moments(nbs)
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
