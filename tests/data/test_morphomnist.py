"""Morpho-MNIST morphometrics and perturbations: known shapes, scikit-image agreement, perturbation accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import transform
from skimage.morphology import medial_axis as sk_medial_axis

from imcf.data import morphomnist as mm
from imcf.data.morphomnist.dataset import load_source_digits


def capsule(p0: tuple[float, float], p1: tuple[float, float], width: float, size: int = 32) -> np.ndarray:
    """An anti-aliased stroke of `width` pixels from p0 to p1 (x, y), rendered by 8x8 supersampling."""
    ss = 8
    y, x = (np.mgrid[0 : size * ss, 0 : size * ss] + 0.5) / ss
    a, b = np.array(p0, float), np.array(p1, float)
    d = b - a
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1]) / (d @ d), 0, 1)
    dist = np.hypot(x - a[0] - t * d[0], y - a[1] - t * d[1])
    coverage = (dist <= width / 2).reshape(size, ss, size, ss).mean(axis=(1, 3))
    return np.rint(255 * coverage).astype(np.uint8)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    x, _ = load_source_digits()
    return mm.pad_to(x[:300], 32)


@pytest.mark.parametrize("width", [2.0, 3.0, 4.0, 5.0, 6.0])
def test_stroke_of_known_width_measures_that_width(width: float) -> None:
    strokes = np.stack(
        [
            capsule((6, 16), (26, 16), width),
            capsule((16, 5), (16, 27), width),
            capsule((8, 6), (24, 26), width),
            capsule((7, 25), (25, 8), width),
        ]
    )
    thickness = mm.measure_batch(strokes, "uint8")["thickness"]
    assert np.all(np.abs(thickness - width) < 0.15), thickness


def test_medial_axis_is_scikit_images(digits: np.ndarray) -> None:
    binary = list(mm.binarise(mm.upscale(digits[:6], 4)))
    edge = binary[0].copy()
    edge[:, :3] = True  # foreground on the image border: no background margin on that side
    corner = np.zeros((20, 20), bool)
    corner[:7, :5] = True
    for b in [*binary, edge, corner, np.zeros((9, 9), bool), np.ones((9, 9), bool)]:
        skel, dist = mm.medial_axis(b, seed=3)
        ref_skel, ref_dist = sk_medial_axis(b, return_distance=True, rng=3)
        assert np.array_equal(skel, ref_skel)
        assert np.array_equal(dist, ref_dist)


@pytest.mark.parametrize("scale", [4, 6])
def test_pyramid_scaling_is_scikit_images(digits: np.ndarray, scale: int) -> None:
    x = digits[:20]
    ref_up = np.stack([np.floor(255 * transform.pyramid_expand(d / 255.0, upscale=scale, order=3)) for d in x])
    up = mm.upscale(x, scale)
    assert up.shape == ref_up.shape
    assert np.array_equal(up, ref_up)
    assert np.array_equal(mm.upscale(x[3], scale), ref_up[3])
    hires = mm.binarise(up).astype(np.float64)
    hires[:, ::7] *= 0.5  # grey columns: not only a binary canvas
    ref_down = np.stack([np.floor(255 * transform.pyramid_reduce(h, downscale=scale, order=3)) for h in hires])
    down = mm.downscale(hires, scale)
    assert down.dtype == np.uint8 and down.shape == x.shape
    # the floor can move a pixel that lands exactly on a grey level (~1e-15 apart) by one level
    diff = np.abs(down.astype(int) - ref_down)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    wide = np.pad(x[:2], ((0, 0), (0, 0), (3, 0)))  # not square
    assert np.array_equal(
        mm.upscale(wide, 2), np.stack([np.floor(255 * transform.pyramid_expand(d / 255.0, 2, order=3)) for d in wide])
    )


def test_batched_measurement_equals_one_by_one(digits: np.ndarray) -> None:
    batch = mm.measure_batch(digits[:5], "uint8", mm.FEATURES)
    for k in range(5):
        one = mm.measure_image(digits[k], "uint8")
        for f in mm.FEATURES:
            assert one[f] == pytest.approx(batch[f][k])


def test_value_ranges_and_shapes_agree(digits: np.ndarray) -> None:
    x = digits[:4]
    ref = mm.measure_batch(x, "uint8")
    signed = x.astype(np.float32)[:, None] / 127.5 - 1.0  # (N, 1, H, W) in [-1, 1]
    unit = x.astype(np.float64) / 255.0
    for images, rng in ((signed, "signed"), (signed, "auto"), (unit, "unit"), (x.astype(float), "uint8")):
        got = mm.measure_batch(images, rng)
        for f in ref:
            np.testing.assert_allclose(got[f], ref[f])
    blank = mm.measure_batch(np.zeros((1, 32, 32), np.uint8), "uint8", mm.FEATURES)
    assert all(np.isnan(v[0]) for v in blank.values())
    with pytest.raises(ValueError, match="unknown Morpho-MNIST feature"):
        mm.measure_batch(x, features=("thickness", "colour"))


def test_intensity_is_the_median_of_the_upper_half_of_the_range() -> None:
    img = np.zeros((32, 32), np.uint8)
    img[10:20, 10:12] = 200  # 20 pixels
    img[10:20, 12:13] = 120  # 10 pixels: above half the range (100)
    img[10:20, 13:14] = 60  # below half the range: not foreground
    fg = np.concatenate([np.full(20, 200), np.full(10, 120)])
    assert mm.intensity(img) == np.median(fg)


def test_shape_features_of_a_rectangle_and_a_slanted_bar() -> None:
    rect = np.zeros((32, 32), np.uint8)
    rect[6:26, 11:21] = 255  # 10 wide, 20 high
    f = mm.measure_image(rect, "uint8")
    # the 98% parallelogram of the blurred, upscaled box: close to the box itself
    assert f["width"] == pytest.approx(10, abs=0.6)
    assert f["height"] == pytest.approx(20, abs=0.6)
    assert f["slant"] == pytest.approx(0.0, abs=1e-6)
    assert f["area"] == pytest.approx(200, rel=0.05)
    # a stroke leaning right (top to the right of the bottom) has positive slant, atan(dx / dy)
    bar = capsule((13, 26), (19, 6), 3.0)
    slant = mm.measure_image(bar, "uint8")["slant"]
    assert slant == pytest.approx(np.arctan(6 / 20), abs=0.05)
    assert mm.measure_image(bar, "uint8")["length"] == pytest.approx(np.hypot(6, 20), abs=2.5)


def reference_parallelogram(img: np.ndarray, frac: float = 0.02) -> tuple[float, float, float, float]:
    """The paper's bounding parallelogram written as plain loops over offsets (slow, obvious)."""
    h, w = img.shape
    x, y = np.arange(w)[None, :], np.arange(h)[:, None]
    m = img.sum()
    cx, cy = (x * img).sum() / m, (y * img).sum() / m
    shear = ((x * y * img).sum() / m - cx * cy) / ((y * y * img).sum() / m - cy**2)
    hcdf = np.array([((x + 0.5 < t + shear * (y - cy)) * img).sum() for t in range(w)]) / m
    vcdf = np.array([((y < t) * img).sum() for t in range(h)]) / m
    left, right = np.interp([frac / 2, 1 - frac / 2], hcdf, np.arange(w))
    top, bottom = np.interp([frac / 2, 1 - frac / 2], vcdf, np.arange(h))
    return left, right, top, bottom


def test_width_and_height_follow_the_papers_parallelogram(digits: np.ndarray) -> None:
    feats = mm.measure_batch(digits[:4], "uint8", ("width", "height"))
    for k in range(4):
        left, right, top, bottom = reference_parallelogram(mm.upscale(digits[k], 4))
        assert feats["width"][k] == pytest.approx((right - left) / 4)
        assert feats["height"][k] == pytest.approx((bottom - top) / 4)


def test_set_thickness_accuracy_on_real_digits(digits: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    targets = rng.uniform(1.0, 6.0, 24)
    got = np.array([mm.fit_thickness(d, t)[1] for d, t in zip(digits[:24], targets)])
    measured = mm.measure_batch(np.stack([mm.set_thickness(digits[0], targets[0])]), "uint8")["thickness"]
    assert measured[0] == pytest.approx(got[0])  # fit_thickness reports what its output measures
    assert np.mean(np.abs(got - targets)) < 0.15


@pytest.mark.slow
def test_set_thickness_accuracy_500_digits() -> None:
    x, _ = load_source_digits()
    rng = np.random.default_rng(1)
    pick = rng.choice(len(x), 500, replace=False)
    targets = rng.uniform(1.0, 6.0, 500)
    got = np.array([mm.fit_thickness(d, t)[1] for d, t in zip(mm.pad_to(x[pick]), targets)])
    assert np.mean(np.abs(got - targets)) < 0.15


def test_set_intensity_hits_the_median_and_keeps_the_shape(digits: np.ndarray) -> None:
    for target in (64.0, 130.5, 200.0, 255.0):
        out = mm.set_intensity(digits[1], target)
        assert abs(mm.intensity(out) - target) <= 1.0
    out = mm.set_intensity(digits[1], 100.0)
    assert np.array_equal(mm.binarise(out), mm.binarise(digits[1]))


def test_paper_perturbations(digits: np.ndarray) -> None:
    img = digits[2]
    base = mm.measure_image(img, "uint8")
    assert mm.measure_image(mm.thicken(img, 1.0), "uint8")["thickness"] > base["thickness"] + 0.5
    assert mm.measure_image(mm.thin(img, 0.7), "uint8")["thickness"] < base["thickness"] - 0.3
    swollen = mm.swell(img, strength=3, radius=7, rng=0)
    assert np.array_equal(swollen, mm.swell(img, strength=3, radius=7, rng=0))  # seeded
    assert mm.measure_image(swollen, "uint8")["area"] > base["area"]
    fractured = mm.fracture(img, num_frac=3, rng=0)
    assert np.array_equal(fractured, mm.fracture(img, num_frac=3, rng=0))
    assert mm.measure_image(fractured, "uint8")["area"] < base["area"]


def test_one_process_renders_in_bounded_chunks(digits: np.ndarray, monkeypatch) -> None:
    """Without a pool the batch is still rendered and measured MAX_CHUNK digits at a time (one chunk of a whole
    split held 2.8 GB at the default job's size), with the same images as a single call."""
    from imcf.data.morphomnist import scm

    monkeypatch.setattr(scm, "MAX_CHUNK", 8)
    seen: list[int] = []
    real = scm._render_chunk
    monkeypatch.setattr(scm, "_render_chunk", lambda args: seen.append(len(args[0])) or real(args))
    bases, t, i = digits[:20], np.linspace(1.5, 4.0, 20), np.linspace(80.0, 250.0, 20)
    out = scm.render_batch(bases, t, i, workers=1)
    assert sum(seen) == 20 and max(seen) <= 8 and len(seen) == 3
    whole = real((bases, None, t, i, scm.DEFAULT_UPSCALE))
    for key in ("image", "thick_image", "measured_thickness", "measured_intensity"):
        np.testing.assert_array_equal(out[key], whole[key])


def test_scm_mechanisms_closed_form() -> None:
    rng = np.random.default_rng(0)
    u = mm.sample_noise(200_000, rng)
    t = mm.thickness_mechanism(u["thickness"])
    assert t.mean() == pytest.approx(0.5 + 10 / 5, abs=0.01)  # Gamma(10, rate 5) has mean 2
    assert t.var() == pytest.approx(10 / 25, rel=0.02)
    i = mm.intensity_mechanism(t, u["intensity"])
    assert i.min() >= 64 and i.max() <= 255
    np.testing.assert_allclose(mm.intensity_noise(t, i), u["intensity"], atol=1e-6)
    assert np.corrcoef(t, i)[0, 1] > 0.8


@pytest.mark.parametrize("workers", [1, 2])
def test_render_batch_reports_progress_when_asked(digits: np.ndarray, workers: int, capsys) -> None:
    bases = digits[:32]
    t, i = np.full(32, 2.5), np.full(32, 180.0)
    quiet = mm.render_batch(bases, t, i, workers=workers)
    assert capsys.readouterr().out == ""
    out = mm.render_batch(bases, t, i, workers=workers, progress="test set")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and lines[-1] == "[imcf] test set: rendered 32/32 digits"
    assert np.array_equal(out["image"], quiet["image"])
    empty = mm.render_batch(bases[:0], [], [], workers=workers)
    assert empty["image"].shape == (0, *bases.shape[1:]) and empty["measured_thickness"].shape == (0,)
