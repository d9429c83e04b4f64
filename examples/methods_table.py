"""Every explanation method of every cell, mean ± std over the seeds evaluated: the RESULTS.md table.

Reads each run's ``eval/test.json`` as written by ``hegl evaluate RUN --methods ...`` (the methods
section and the randomisation sanity check) and prints one markdown row per (cell, method): energy
in mask (with the uniform map's chance level), pointing game, deletion gain over a random order,
insertion gain, and the sanity check's final similarity (how many seeds flagged the method). A CSV of
the per-run values goes to ``--csv``.

    python examples/methods_table.py ablations/explain-study/runs [--csv methods.csv]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np

METRICS = ("energy_in_mask", "energy_uniform", "pointing_game", "deletion_gain", "insertion_gain")


def run_rows(runs_dir: Path) -> list[dict]:
    """One row per (run, method) of every run under ``runs_dir`` that has a methods section."""
    rows = []
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.is_symlink()):
        report = run / "eval" / "test.json"
        match = re.fullmatch(r"(.+)_s(\d+)", run.name)
        if not report.is_file() or match is None:
            continue
        data = json.loads(report.read_text())
        methods = (data.get("methods") or {}).get("methods") or {}
        sanity = (data.get("sanity") or {}).get("methods") or {}
        for method, values in methods.items():
            row = {"cell": match.group(1), "seed": int(match.group(2)), "method": method}
            row |= {k: values.get(k) for k in METRICS}
            row["sanity_similarity"] = sanity.get(method, {}).get("final_similarity")
            row["flagged"] = sanity.get(method, {}).get("flagged")
            rows.append(row)
    return rows


def mean_std(values: list[float]) -> str:
    """'m ± s' over seeds (s with ddof 1; just 'm' for one seed)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "-"
    return f"{v.mean():.3f}" if v.size == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def table(rows: list[dict], cells: list[str] | None = None) -> str:
    """The markdown table, cells in the order given (or as found), methods in the order evaluated."""
    order = cells or list(dict.fromkeys(r["cell"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| cell | method | seeds | energy in mask (uniform) | pointing game | deletion gain | insertion gain "
             "| sanity similarity (flagged) |", "|---|---|---|---|---|---|---|---|"]
    for cell in order:
        for method in methods:
            sel = [r for r in rows if r["cell"] == cell and r["method"] == method]
            if not sel:
                continue
            col = {k: [r[k] for r in sel] for k in (*METRICS, "sanity_similarity")}
            flagged = sum(bool(r["flagged"]) for r in sel)
            lines.append(f"| {cell} | {method} | {len(sel)} | {mean_std(col['energy_in_mask'])} "
                         f"({mean_std(col['energy_uniform'])}) | {mean_std(col['pointing_game'])} "
                         f"| {mean_std(col['deletion_gain'])} | {mean_std(col['insertion_gain'])} "
                         f"| {mean_std(col['sanity_similarity'])} ({flagged}/{len(sel)}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path, help="a folder of runs named <cell>_s<seed>")
    parser.add_argument("--cells", nargs="*", help="cells to show, in this order")
    parser.add_argument("--csv", type=Path, help="also write the per-run values here")
    args = parser.parse_args()
    rows = run_rows(args.runs_dir)
    if not rows:
        raise SystemExit(f"{args.runs_dir}: no run with a methods section in eval/test.json")
    print(table(rows, args.cells))
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
