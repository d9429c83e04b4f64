"""Is a difference between two cells beyond the seed noise? A paired t-test across seeds.

For each claimed comparison (cell A vs cell B on one metric), the runs are paired by seed (the
same seed trains the same data order and initialisation in both cells), and the script prints the
mean and std of A - B over the seeds, the paired t-test's p-value, and "noise" when p >= 0.05 or
|mean| <= std. With 3 seeds a paired t-test has 2 degrees of freedom: only large, consistent
differences pass it, and "noise" means "not shown", not "no difference".

    python examples/seed_noise.py examples/study/runs.json a1_b0:a0_b0:auc a1_b1:a1_b0:auc ...
    python examples/seed_noise.py RUNS.json --claims examples/study/claims.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats


def paired(rows: list[dict], a: str, b: str, metric: str) -> dict:
    """A - B over the seeds both cells have: mean, std (ddof 1), p of the paired t-test, noise or not."""
    va = {r["seed"]: r[metric] for r in rows if r["cell"] == a and r.get(metric) is not None}
    vb = {r["seed"]: r[metric] for r in rows if r["cell"] == b and r.get(metric) is not None}
    seeds = sorted(set(va) & set(vb))
    if len(seeds) < 2:
        raise SystemExit(f"{a} vs {b} on {metric}: fewer than two shared seeds")
    diff = np.array([va[s] - vb[s] for s in seeds])
    p = float(stats.ttest_rel([va[s] for s in seeds], [vb[s] for s in seeds]).pvalue)
    std = float(diff.std(ddof=1))
    return {"a": a, "b": b, "metric": metric, "seeds": seeds, "mean": float(diff.mean()), "std": std, "p": p,
            "noise": bool(np.isnan(p) or p >= 0.05 or abs(diff.mean()) <= std)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="an ablation's runs.json (or several, merged)", nargs="+")
    parser.add_argument("--claims", type=Path, help="a file of CELL_A:CELL_B:METRIC lines")
    parser.add_argument("--compare", nargs="*", default=[], help="CELL_A:CELL_B:METRIC")
    args = parser.parse_args()
    rows = [r for path in args.runs for r in json.loads(path.read_text())]
    claims = list(args.compare) + ([line.strip() for line in args.claims.read_text().splitlines()
                                    if line.strip() and not line.startswith("#")] if args.claims else [])
    print("| A | B | metric | A - B (mean ± std over seeds) | paired t-test p | verdict |")
    print("|---|---|---|---|---|---|")
    for claim in claims:
        a, b, metric = claim.rsplit(":", 2)
        r = paired(rows, a, b, metric)
        verdict = "inside the seed noise" if r["noise"] else "beyond the seed noise"
        print(f"| {a} | {b} | {metric} | {r['mean']:+.3f} ± {r['std']:.3f} | {r['p']:.3f} | {verdict} |")


if __name__ == "__main__":
    main()
