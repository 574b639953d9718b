"""The thickness -> intensity SCM of Pawlowski et al. (NeurIPS 2020) over Morpho-MNIST digits, and rendering
digits under it (over a spawn-safe process pool)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from imcf.data.morphomnist.measure import DEFAULT_UPSCALE, measure_batch, to_uint8
from imcf.data.morphomnist.perturb import set_intensity, set_thickness
from imcf.data.parallel import map_chunks

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


#: most digits one render/measure call holds at once (bounds the memory of a one-process generation)
MAX_CHUNK = 256


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
    # chunks of at most MAX_CHUNK digits even in one process: measuring a whole split at once (upscaled
    # float64 images) held 2.8 GB where chunks hold 1.3
    parts_wanted = max(workers * 8 if workers > 1 else 1, -(-n // MAX_CHUNK))
    bounds = np.linspace(0, n, min(n, parts_wanted) + 1).astype(int)
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
