"""do(thickness) on a trained Morpho-MNIST run under each `abduction.residual` mode, judged by the morphometrics and
against the true counterfactual: the development loop of the transported residual (docs/results.md, issue 16).

    python benchmarks/residual_transport.py RUN_DIR [--num-samples 300] [--split test]
        [--variants additive transported transported:TRANSPORT_STEPS=1 transported:resample=bicubic ...]

Each digit of the split is sent to the thickness of another one (a fixed random permutation), intensity following
the run's flow. A variant is a residual mode, optionally with `:NAME=VALUE` settings of the module constants of
`imcf.mechanisms.latent_image` (TRANSPORT_EPS, TRANSPORT_MAX, TRANSPORT_POOL, TRANSPORT_STEPS), kept for the
variants after it, and `:option=value` abduction options of that variant (`resample=bicubic`, `fit.steps=10`; the
model keeps them for the variants after it unless they set them again). Prints per variant: the fit measured =
a + b * target + c * factual thickness (c: the share of the factual kept), the thickness MAE (px), the PSNR
against the true counterfactual, the share of its squared error that lies where the
true counterfactual differs from the factual (by more than 2 grey levels: the band the stroke change touches), the
image L1 (0..255) of the round trip there and back, and the CPU seconds of the counterfactuals; first the PSNR of
the factual itself (no change), the band's share of the pixels and the morphometrics' own error on the true
counterfactuals (the floor: the measured thickness of the true image against the target); then, per variant, the
thickness error by the size and sign of the asked change (target - factual, px: mean signed error and MAE per bin)
and the measured move minus the asked change (the move from the variant's own image at the factual thickness: the
factual where the residual is kept, the bare decode with `transported:keep_residual=false`), and that image's own
thickness error by bin of the factual thickness (about 0 where the residual is kept; the decoder's rendering
without it);
writes benchmarks/results/residual_transport.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from machine import write_json  # benchmarks/ is on sys.path when a script runs
from omegaconf import OmegaConf

import imcf.mechanisms.latent_image as latent_image
from imcf.data.datamodule import build_dataset
from imcf.evaluation import load_run
from imcf.metrics.truth import psnr

ROOT = Path(__file__).resolve().parents[1]
NODES = ("thickness", "intensity", "digit", "image")
#: bins of the asked change (target - factual thickness, px) for the signed-error table
CHANGE_BINS = (-9.0, -1.0, -0.5, 0.0, 0.5, 1.0, 9.0)
#: bins of the factual thickness (px) for the error of the variant's own image at the factual thickness
FACTUAL_BINS = (0.0, 1.5, 2.5, 3.5, 4.5, 9.0)
#: the band: pixels where the true counterfactual differs from the factual by more than 2 grey levels ([-1, 1] units)
BAND = 2 / 127.5


def counterfactuals(scm, factual: dict, do: dict, batch: int = 100) -> dict:
    """`scm.counterfactual` in batches."""
    chunks = [slice(i, i + batch) for i in range(0, len(factual["image"]), batch)]
    parts = [scm.counterfactual({k: v[c] for k, v in factual.items()}, {k: v[c] for k, v in do.items()})
             for c in chunks]  # fmt: skip
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def by_change(change: np.ndarray, error: np.ndarray, bins: tuple[float, ...] = CHANGE_BINS) -> list[dict]:
    """Mean signed error and MAE of the measured thickness per bin of `change` (`CHANGE_BINS`: the asked change)."""
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        s = (change >= lo) & (change < hi)
        if s.any():
            rows.append({"lo": lo, "hi": hi, "n": int(s.sum()), "signed": float(error[s].mean()),
                         "mae": float(np.abs(error[s]).mean())})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--num-samples", type=int, default=300)
    parser.add_argument("--split", default="test", help="the digits (val: to choose settings without the test set)")
    parser.add_argument("--variants", nargs="+", default=["additive", "transported"])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "residual_transport.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    scm, cfg = load_run(args.run_dir)
    scm.eval()
    data_root = cfg["dataset"].get("root") or cfg.get("data_root") or "data"
    ds = build_dataset(cfg["dataset"]["name"], data_root, args.split, **cfg["dataset"]["options"])
    n = min(args.num_samples, len(ds))
    items = [ds[i] for i in range(n)]
    factual = {k: torch.stack([it[k] for it in items]) for k in NODES}
    target = factual["thickness"][torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    truth = ds.true_counterfactual(torch.arange(n), {"thickness": target})["image"]
    band = (truth - factual["image"]).abs() > BAND
    unchanged = float(psnr(factual["image"], truth).mean())
    share = float(band.float().mean())
    t, f = target.flatten().numpy(), factual["thickness"].flatten().numpy()
    floor = float(np.abs(ds.measure(truth)["thickness"].flatten().numpy() - t).mean())
    print(
        f"the factual itself: PSNR {unchanged:.2f}; the true change touches {share:.1%} of pixels; "
        f"the true counterfactuals measure {floor:.3f} px from their targets"
    )
    rows = []
    for variant in args.variants:
        mode, *settings = variant.split(":")
        given = []  # abduction options of this variant, `fit.steps=10` a key of a nested option (OmegaConf dotlist)
        for setting in settings:
            name, value = setting.split("=")
            if name.isupper():  # a module constant, kept for the variants after it
                setattr(latent_image, name, type(getattr(latent_image, name))(float(value)))
            else:
                given.append(setting)
        options = {"residual": mode, **OmegaConf.to_container(OmegaConf.from_dotlist(given))}
        scm.set_inference_options("image", {"abduction": options})
        with torch.no_grad():
            start = time.process_time()
            cf = counterfactuals(scm, factual, {"thickness": target})
            cpu = time.process_time() - start
            back = counterfactuals(scm, cf, {"thickness": factual["thickness"]})["image"]
            # the variant at the factual thickness: the factual itself where the residual is kept, the bare decode
            # where it is not (`keep_residual=false`); the move is measured from it
            still = counterfactuals(scm, factual, {"thickness": factual["thickness"]})["image"]
        measured = ds.measure(cf["image"])["thickness"].flatten().numpy()
        measured_still = ds.measure(still)["thickness"].flatten().numpy()
        fit = np.linalg.lstsq(np.stack([np.ones(n), t, f], 1), measured, rcond=None)[0]
        err = (cf["image"] - truth) ** 2
        row = {
            "variant": variant,
            "fit_a_b_c": [round(float(v), 3) for v in fit],
            "thickness_mae": float(np.abs(measured - t).mean()),
            "psnr": float(psnr(cf["image"], truth).mean()),
            "error_in_band": float(err[band].sum() / err.sum()),
            "round_trip_l1": float((back - factual["image"]).abs().mean() * 127.5),
            "cpu_s": round(cpu, 2),
            "by_change": by_change(t - f, measured - t),
            "move_error_by_change": by_change(t - f, measured - measured_still - (t - f)),
            "still_error_by_factual": by_change(f, measured_still - f, FACTUAL_BINS),
        }
        rows.append(row)
        print(
            f"{variant:40s} a, b, c {row['fit_a_b_c']}  thickness MAE {row['thickness_mae']:.3f}  "
            f"PSNR {row['psnr']:.2f} ({row['error_in_band']:.0%} of its error in the band)  "
            f"round trip L1 {row['round_trip_l1']:.2f}  [{cpu:.1f} CPU-s]",
            flush=True,
        )
        for b, mv in zip(row["by_change"], row["move_error_by_change"], strict=True):
            print(
                f"    change in [{b['lo']:+.1f}, {b['hi']:+.1f}) px: {b['n']:4d} digits, "
                f"signed error {b['signed']:+.3f}, MAE {b['mae']:.3f}; move - asked {mv['signed']:+.3f}"
            )
        for b in row["still_error_by_factual"]:
            print(
                f"    at the factual thickness, factual in [{b['lo']:.1f}, {b['hi']:.1f}) px: {b['n']:4d} digits, "
                f"measured - factual {b['signed']:+.3f}"
            )
    meta = {"run_dir": args.run_dir, "num_samples": n, "split": args.split, "factual_psnr": unchanged,
            "band_share_of_pixels": share, "truth_thickness_mae": floor}  # fmt: skip
    write_json(args.out, meta, rows)


if __name__ == "__main__":
    main()
