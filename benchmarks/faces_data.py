"""Synthetic faces: generation time per 1,000 faces, and how visible each attribute is to a small CNN.

    python benchmarks/faces_data.py            # 20,000 training faces, classifier trained for 60 s
    python benchmarks/faces_data.py --quick    # 4,000 training faces, 45 s (the slow test runs this)

Generation is timed in a fresh temporary root (rendering, compression and cache writing), then the cached
set is reloaded and timed. The classifier is a 4-layer CNN with one logit per attribute, trained with Adam
for a fixed wall-clock budget (and at least 300 steps of 64 faces, so a busy machine cannot starve it);
F1 is measured on the test split at threshold 0.5. The full run also draws results/faces_counterfactuals.png:
each row a test face, then its true counterfactual under do(a = 1 - a) for each attribute in ATTRIBUTES order.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from imcf.data.faces import ATTRIBUTES, FacesDataset, default_workers, derive_attributes, render_faces, sample_exogenous

RESULTS = Path(__file__).resolve().parent / "results" / "faces_data.json"
GRID = Path(__file__).resolve().parent / "results" / "faces_counterfactuals.png"


def counterfactual_grid(ds: FacesDataset, rows: int = 8) -> np.ndarray:
    """Rows of faces: factual, then the true counterfactual flipping each attribute in turn (uint8 HWC)."""
    idx = torch.arange(rows)
    cols = [ds.images[idx]]
    for a in ATTRIBUTES:
        cf = ds.true_counterfactual(idx, {a: 1 - ds.attributes[a][idx]})
        cols.append(((cf["image"] + 1) * 127.5).round().to(torch.uint8))
    grid = torch.stack(cols, 1)  # (rows, cols, 3, H, W)
    r, c, ch, h, w = grid.shape
    return grid.permute(0, 3, 1, 4, 2).reshape(r * h, c * w, ch).numpy()


def attribute_classifier() -> nn.Module:
    """A small CNN: (B, 3, 64, 64) -> (B, 6) logits, one per attribute."""

    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), block(64, 64), nn.Flatten(), nn.Linear(1024, 6))


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


def labels(ds: FacesDataset) -> torch.Tensor:
    return torch.stack([ds.attributes[a] for a in ATTRIBUTES], 1)


def f1_scores(pred: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    out = {}
    for j, a in enumerate(ATTRIBUTES):
        tp = float((pred[:, j] * true[:, j]).sum())
        fp = float((pred[:, j] * (1 - true[:, j])).sum())
        fn = float(((1 - pred[:, j]) * true[:, j]).sum())
        out[a] = 2 * tp / max(2 * tp + fp + fn, 1.0)
    return out


def train_classifier(
    train: FacesDataset, test: FacesDataset, seconds: float, min_steps: int = 300, seed: int = 0
) -> dict:
    """Train the CNN for `seconds` of wall-clock time (and at least `min_steps`); F1 per attribute on `test`."""
    torch.manual_seed(seed)
    model = attribute_classifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x_all, y_all = train.images, labels(train)
    gen = torch.Generator().manual_seed(seed)
    start, steps, seen = time.perf_counter(), 0, 0
    model.train()

    def done() -> bool:
        return time.perf_counter() - start >= seconds and steps >= min_steps

    while not done():
        for batch in torch.randperm(len(x_all), generator=gen).split(64):
            loss = nn.functional.binary_cross_entropy_with_logits(model(to_float(x_all[batch])), y_all[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps, seen = steps + 1, seen + len(batch)
            if done():
                break
    train_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(to_float(x)) for x in test.images.split(512)])
    pred, true = (logits > 0).float(), labels(test)
    return {
        "train_seconds": round(train_s, 1),
        "steps": steps,
        "epochs": round(seen / len(x_all), 2),
        "train_size": len(x_all),
        "test_size": len(true),
        "f1": {a: round(v, 4) for a, v in f1_scores(pred, true).items()},
        "accuracy": {a: round(float((pred[:, j] == true[:, j]).float().mean()), 4) for j, a in enumerate(ATTRIBUTES)},
        "positive_rate": {a: round(float(true[:, j].mean()), 4) for j, a in enumerate(ATTRIBUTES)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4,000 training faces and a 45 s classifier budget")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=None, help="classifier training budget")
    parser.add_argument("--min-steps", type=int, default=300, help="train at least this many steps")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: all cores)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the classifier")
    parser.add_argument("--root", default=None, help="data root (default: a fresh temporary folder)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    n_train = args.train_size or (4000 if args.quick else 20000)
    seconds = args.seconds or (45.0 if args.quick else 60.0)
    torch.set_num_threads(args.threads)
    workers = args.workers or default_workers()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        sizes = {"train": n_train, "val": 0, "test": args.test_size}
        # rendering alone, one process
        u = sample_exogenous(2000, seed=123)
        a = derive_attributes(u)
        t = time.perf_counter()
        render_faces(np.stack([a[k] for k in ATTRIBUTES], 1), u["image"], 64, workers=1)
        render_1 = (time.perf_counter() - t) / 2
        # the whole dataset: render in parallel, compress, write the cache
        t = time.perf_counter()
        train = FacesDataset(root, "train", sizes=sizes, workers=workers)
        generate = time.perf_counter() - t
        t = time.perf_counter()
        FacesDataset(root, "train", sizes=sizes, workers=workers)
        reload = time.perf_counter() - t
        test = FacesDataset(root, "test", sizes=sizes, workers=workers)
        cache_mb = sum(p.stat().st_size for p in train.cache_dir.iterdir()) / 2**20
        if args.out == str(RESULTS):
            GRID.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(counterfactual_grid(test)).save(GRID)
        clf = train_classifier(train, test, seconds, args.min_steps)

    result = {
        "date": "2026-11-23",
        "machine": f"{platform.machine()}, {default_workers()} CPU cores, no GPU, shared with other jobs",
        "generation": {
            "faces": n_train,
            "workers": workers,
            "seconds": round(generate, 2),
            "seconds_per_1000": round(generate / n_train * 1000, 2),
            "render_only_seconds_per_1000_one_process": round(render_1, 2),
            "reload_seconds": round(reload, 2),
            "cache_MiB": round(cache_mb, 1),
        },
        "classifier": clf,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    g = result["generation"]
    print(f"generation: {n_train} faces, {workers} workers: {g['seconds']} s ({g['seconds_per_1000']} s / 1000 faces)")
    print(f"  render only, 1 process: {g['render_only_seconds_per_1000_one_process']} s / 1000 faces")
    print(f"  cache reload: {g['reload_seconds']} s, cache size {g['cache_MiB']} MiB")
    print(f"classifier: {clf['steps']} steps ({clf['epochs']} epochs) in {clf['train_seconds']} s")
    print(f"{'attribute':<12} {'F1':>7} {'accuracy':>9} {'positives':>10}")
    for k in ATTRIBUTES:
        print(f"{k:<12} {clf['f1'][k]:>7.4f} {clf['accuracy'][k]:>9.4f} {clf['positive_rate'][k]:>10.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
