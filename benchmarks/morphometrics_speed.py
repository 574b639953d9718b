"""CPU cost of the Morpho-MNIST morphometrics and of rendering a digit, today's code against a baseline.

    python benchmarks/morphometrics_speed.py                   # baseline: scikit-image's own functions
    python benchmarks/morphometrics_speed.py --baseline 94afe6f  # baseline: measure.py of that git revision

The baseline swaps `upscale`, `downscale` and `medial_axis` (the three functions the measurement and the
perturbations are built on) for the baseline's, in the same process, so both sides run the same digits on the
same machine; alternating repeats, the median CPU time of this process (one thread). Printed and written to
JSON: CPU ms per digit of `measure_batch` (thickness + intensity) and of `render_digit` (set_thickness with its
secant search + set_intensity, what data generation and the true counterfactuals do), the speed-up, and how far
the two sides' outputs differ (they should not, beyond the floor of a value ~1e-15 from a grey level).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from unittest import mock

import numpy as np
from skimage import morphology, transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, write_json  # noqa: E402

from imcf.data import morphomnist as mm  # noqa: E402
from imcf.data.morphomnist import measure, perturb  # noqa: E402
from imcf.data.morphomnist.dataset import load_source_digits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "morphometrics_speed.json"
SWAPPED = ("upscale", "downscale", "medial_axis")


def _skimage_upscale(images: np.ndarray, scale: int) -> np.ndarray:
    x = np.asarray(images)
    one = lambda im: np.floor(255.0 * transform.pyramid_expand(im / 255.0, upscale=scale, order=3))  # noqa: E731
    return one(x.astype(np.float64)) if x.ndim == 2 else np.stack([one(im.astype(np.float64)) for im in x])


def _skimage_downscale(hires: np.ndarray, scale: int) -> np.ndarray:
    x = np.asarray(hires, np.float64)
    one = lambda im: np.clip(np.floor(255.0 * transform.pyramid_reduce(im, scale, order=3)), 0, 255)  # noqa: E731
    return (one(x) if x.ndim == 2 else np.stack([one(im) for im in x])).astype(np.uint8)


def _skimage_medial_axis(binary: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return morphology.medial_axis(np.asarray(binary, bool), return_distance=True, rng=seed)


def baseline_functions(rev: str | None) -> dict[str, Callable]:
    """The baseline's upscale / downscale / medial_axis: scikit-image's, or measure.py at git revision `rev`."""
    if rev is None:
        return {"upscale": _skimage_upscale, "downscale": _skimage_downscale, "medial_axis": _skimage_medial_axis}
    src = subprocess.run(
        ["git", "show", f"{rev}:imcf/data/morphomnist/measure.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_measure.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_measure", path)
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: getattr(module, name) for name in SWAPPED}


@contextlib.contextmanager
def swapped(functions: dict[str, Callable] | None) -> Iterator[None]:
    """Run with `functions` in place of today's in the measurement and perturbation modules (None: today's)."""
    with contextlib.ExitStack() as stack:
        for name, fn in (functions or {}).items():
            for module in (measure, perturb):
                if hasattr(module, name):
                    stack.enter_context(mock.patch.object(module, name, fn))
        yield


def render(digits: np.ndarray, ts: np.ndarray, is_: np.ndarray) -> np.ndarray:
    return np.stack([mm.render_digit(d, t, i) for d, t, i in zip(digits, ts, is_)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", metavar="REV", default=None, help="git revision of the baseline measure.py")
    ap.add_argument("--measure-n", type=int, default=500, help="digits measured per repeat")
    ap.add_argument("--render-n", type=int, default=60, help="digits rendered per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    digits = mm.pad_to(load_source_digits()[0], 32)
    rng = np.random.default_rng(0)
    measured = digits[rng.choice(len(digits), args.measure_n, replace=False)]
    bases = digits[rng.choice(len(digits), args.render_n, replace=False)]
    noise = mm.sample_noise(args.render_n, rng)
    ts = mm.thickness_mechanism(noise["thickness"])
    is_ = mm.intensity_mechanism(ts, noise["intensity"])
    base = baseline_functions(args.baseline)
    label = f"measure.py at {args.baseline}" if args.baseline else "scikit-image functions"

    jobs = {
        "measure_batch": lambda: mm.measure_batch(measured, "uint8"),
        "render_digit": lambda: render(bases, ts, is_),
    }
    sizes = {"measure_batch": args.measure_n, "render_digit": args.render_n}
    times: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], object] = {}
    for _ in range(args.repeats):
        for side, fns in (("baseline", base), ("today", None)):
            for job, fn in jobs.items():
                with swapped(fns):
                    c0 = time.process_time()
                    outputs[side, job] = fn()
                    times.setdefault((side, job), []).append(time.process_time() - c0)

    rows = []
    for job in jobs:
        before = 1e3 * statistics.median(times["baseline", job]) / sizes[job]
        after = 1e3 * statistics.median(times["today", job]) / sizes[job]
        if job == "measure_batch":
            a, b = outputs["baseline", job], outputs["today", job]
            diff = {f"max_abs_diff_{k}": float(np.nanmax(np.abs(a[k] - b[k]))) for k in a}
        else:
            a, b = outputs["baseline", job].astype(int), outputs["today", job].astype(int)
            diff = {"pixels_differing": float((a != b).mean()), "max_abs_diff_grey": int(np.abs(a - b).max())}
        rows.append({"job": job, "n": sizes[job], "baseline_cpu_ms": before, "today_cpu_ms": after, **diff})

    print(f"CPU: {cpu_model()}; baseline: {label}; median of {args.repeats} alternating repeats, CPU ms per digit")
    print(f"{'job':<14} {'n':>4} {'baseline':>9} {'today':>8} {'speed-up':>8}  outputs")
    for r in rows:
        extra = {k: v for k, v in r.items() if k.startswith(("max_", "pixels_"))}
        print(
            f"{r['job']:<14} {r['n']:>4} {r['baseline_cpu_ms']:>9.2f} {r['today_cpu_ms']:>8.2f} "
            f"{r['baseline_cpu_ms'] / r['today_cpu_ms']:>8.2f}  {extra}"
        )
    write_json(args.out, {"baseline": label, "repeats": args.repeats, "threads": "one process"}, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
