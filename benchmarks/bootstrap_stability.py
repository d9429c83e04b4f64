"""How many bootstrap resamples a 95% interval needs: its ends, drawn with two bootstrap seeds, per
resample count; and the time of one interval.

    python benchmarks/bootstrap_stability.py                  # generated: 300 and 600 images x 4 classes
    python benchmarks/bootstrap_stability.py --run runs/demo  # a run's test predictions (hegl evaluate's)

For each count n it prints the largest move of an interval end (AUC, F1 and MCC, lower and upper)
between seed 0 and seed 1, over ``--pairs`` seed pairs (0/1, 2/3, ...), and the seconds per interval.
eval.bootstrap's default (classification.BOOTSTRAP_RESAMPLES) is the smallest count whose worst
move stays under 0.005.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hegl_cli.evaluation.classification import BOOTSTRAP_RESAMPLES, bootstrap_macro, choose_thresholds


def generated(images: int, classes: int = 4, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Labels at 30% prevalence and probabilities with a macro AUC near 0.8."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((images, classes)) < 0.3).astype(float)
    probs = 1 / (1 + np.exp(-(1.2 * (labels - 0.5) + rng.normal(0, 1, (images, classes)))))
    return probs, labels


def run_predictions(run: str, data: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run's test probabilities, labels and val-chosen thresholds."""
    from pathlib import Path

    from hegl_cli.engine.checkpoint import load_run
    from hegl_cli.models.inference import predict_split

    with load_run(Path(run), "best", data=Path(data) if data else None, device="cpu",
                  split="test") as loaded:
        preds = predict_split(loaded.model, loaded.split, loaded.device, loaded.cfg.eval.batch_size)
        return preds.probs, np.asarray(loaded.split.labels), np.asarray(loaded.thresholds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained run folder (its test split); default: generated data")
    parser.add_argument("--data", help="with --run: its cache, where the run's recorded path does not reach it")
    parser.add_argument("--counts", default="200,500,1000,2000,5000")
    parser.add_argument("--pairs", type=int, default=3, help="seed pairs per count")
    args = parser.parse_args()
    if args.run:
        probs, labels, thresholds = run_predictions(args.run, args.data)
        report(f"{args.run} (test, {len(probs)} images)", probs, labels, thresholds, args)
        return
    for images in (300, 600):
        probs, labels = generated(images)
        report(f"generated ({images} images x {labels.shape[1]} classes)", probs, labels,
               choose_thresholds(probs, labels), args)


def report(source: str, probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, args) -> None:
    print(f"{source}; default eval.bootstrap = {BOOTSTRAP_RESAMPLES}")
    print(f"{'n':>6} {'worst end move':>15} {'mean end move':>14} {'AUC interval (seed 0)':>22} {'s/interval':>11}")
    for n in (int(c) for c in args.counts.split(",")):
        moves, seconds = [], []
        first = None
        for pair in range(args.pairs):
            t0 = time.perf_counter()
            a = bootstrap_macro(probs, labels, thresholds, n=n, seed=2 * pair)
            seconds.append(time.perf_counter() - t0)
            b = bootstrap_macro(probs, labels, thresholds, n=n, seed=2 * pair + 1)
            first = first or a
            moves += [abs(a[k][i] - b[k][i]) for k in ("auc", "f1", "mcc") for i in (0, 1)]
        auc = f"[{first['auc'][0]:.3f}, {first['auc'][1]:.3f}]"
        print(f"{n:>6} {max(moves):>15.4f} {np.mean(moves):>14.4f} {auc:>22} {np.mean(seconds):>11.3f}")


if __name__ == "__main__":
    main()
