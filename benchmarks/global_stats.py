"""Position-free audit of the built-in benchmark: test AUC per class of a logistic regression on
global image statistics (hegl_cli.data.audit), trained on the train split. v2 keeps every class at
or below 0.60 (tests/test_benchmark.py asserts it); 0.1.0's dataset gave 0.97 for Effusion.

    python benchmarks/global_stats.py [--n-train 900] [--n-test 600] [--size 128]

Run it with PYTHONPATH pointing at another checkout to audit that version's generator.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hegl_cli.data.audit import global_statistics, position_free_auc
from hegl_cli.data.synthetic import SYNTHETIC_CLASSES, SyntheticSpec, generate_case


def features_and_labels(spec: SyntheticSpec, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    cases = [generate_case((spec, split, i)) for i in range(n)]
    x = np.stack([global_statistics(c["image"]) for c in cases])
    y = np.array([[name in c["record"]["syms"] for name in SYNTHETIC_CLASSES] for c in cases], dtype=int)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=900)
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--size", type=int, default=128, help="generator size (the cache's default is 256 -> 128)")
    args = parser.parse_args()
    start = time.perf_counter()
    spec = SyntheticSpec(size=args.size)
    aucs = position_free_auc(*features_and_labels(spec, "train", args.n_train),
                             *features_and_labels(spec, "test", args.n_test))
    print(f"position-free logistic regression, {args.n_train} train / {args.n_test} test images at {args.size} px "
          f"({time.perf_counter() - start:.0f} s)")
    for name, auc in zip(SYNTHETIC_CLASSES, aucs):
        print(f"  {name:<14} test AUC {auc:.3f}")


if __name__ == "__main__":
    main()
