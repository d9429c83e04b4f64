"""Position-free audit of the built-in benchmark: test AUC per class of a logistic regression on
global image statistics (hegl_cli.evaluation.image_statistics), trained on the train split. v2 keeps every class at
or below 0.60 (tests/test_benchmark.py asserts it); 0.1.0's dataset gave 0.98 for Effusion.

    python benchmarks/global_stats.py [--n-train 900] [--n-test 600] [--size 128] [--generator-from DIR]

``--generator-from DIR`` audits the generator of another checkout (e.g. 0.1.0's, commit 9240807)
with this checkout's features and classifier.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

import hegl_cli.data.benchmark.generator as this_generator
from hegl_cli.evaluation.image_statistics import global_statistics, position_free_auc


def load_generator(root: Path | None) -> ModuleType:
    """This checkout's synthetic module, or another checkout's (``hegl_cli/data/benchmark/generator.py``, or
    ``hegl_cli/data/synthetic.py`` before 0.2)."""
    if root is None:
        return this_generator
    path = next(p for p in (root / "hegl_cli" / "data" / "formats" / "synthetic.py", root / "hegl_cli" / "data" / "synthetic.py")
                if p.is_file())
    spec = importlib.util.spec_from_file_location("other_synthetic", path)
    _shim_old_prepare_module()
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _shim_old_prepare_module() -> None:
    """Before 0.2 the generator imported its cache helpers from ``hegl_cli.data.prepare``; give it
    this checkout's (generate_case, the only part used here, needs none of them)."""
    import hegl_cli.apps.prepare as apps_prepare
    import hegl_cli.data.build as build
    import hegl_cli.data.parallel as parallel
    import hegl_cli.data.records as records

    shim = ModuleType("hegl_cli.data.prepare")
    shim.__dict__.update({**vars(build), **vars(apps_prepare), "SplitSource": records.SplitSource,
                          "_parallel_map": parallel.parallel_map})
    sys.modules.setdefault("hegl_cli.data.prepare", shim)


def features_and_labels(gen: ModuleType, size: int, split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    cases = [gen.generate_case((gen.SyntheticSpec(size=size), split, i)) for i in range(n)]
    x = np.stack([global_statistics(c["image"]) for c in cases])
    y = np.array([[name in c["record"]["syms"] for name in gen.SYNTHETIC_CLASSES] for c in cases], dtype=int)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=900)
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument("--size", type=int, default=128, help="generator size (the cache's default is 256 -> 128)")
    parser.add_argument("--generator-from", type=Path, default=None, help="another checkout's root")
    args = parser.parse_args()
    start = time.perf_counter()
    gen = load_generator(args.generator_from)
    aucs = position_free_auc(*features_and_labels(gen, args.size, "train", args.n_train),
                             *features_and_labels(gen, args.size, "test", args.n_test))
    print(f"position-free logistic regression, {args.n_train} train / {args.n_test} test images at {args.size} px, "
          f"generator {gen.__file__} ({time.perf_counter() - start:.0f} s)")
    for name, auc in zip(gen.SYNTHETIC_CLASSES, aucs):
        print(f"  {name:<14} test AUC {auc:.3f}")


if __name__ == "__main__":
    main()
