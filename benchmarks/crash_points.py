"""The long variant of the kill-point harness: every command killed at N points (its named points
inside writes first, then instants spread over its run, seeded), run again, compared with an
uninterrupted run. Prints one row per command and a final verdict; exit 1 if any point lost or
changed a result.

Usage: python benchmarks/crash_points.py [--points 20] [--seed 0] [--commands prepare,train,...] [--keep DIR]
(about 25 minutes for 20 points x 7 commands on 2 cores; each command runs with one thread).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import crash_harness as harness  # noqa: E402  (tests/crash_harness.py)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commands", default="prepare,train,evaluate,ablation,report,explain,predict")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep the folders (default: a temp dir)")
    args = parser.parse_args()
    env = harness.environment()
    root = args.keep or Path(tempfile.mkdtemp(prefix="hegl-crash-"))
    harness.make_shared(root / "shared", env)
    wanted = args.commands.split(",")
    print("| command | points | killed mid-run | rerun completed | answered --resume | answered --force | "
          "same result | leftovers | seconds |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    failures = []
    for scenario in [s for s in harness.scenarios(root / "shared") if s.name in wanted]:
        start = time.perf_counter()
        reference, seconds = harness.measure(scenario, root / "work", env)
        outcomes = [harness.try_point(scenario, point, root / "work", env, reference)
                    for point in harness.kill_points(scenario, seconds, args.points, args.seed)]
        failures += [o for o in outcomes if not o.ok]
        answers = Counter(o.answer for o in outcomes)
        print(f"| {scenario.name} | {len(outcomes)} | {sum(o.killed for o in outcomes)} | {answers['completed']} | "
              f"{answers['--resume']} | {answers['--force']} | {sum(o.same for o in outcomes)} | "
              f"{sum(bool(o.leftovers) for o in outcomes)} | {time.perf_counter() - start:.0f} |", flush=True)
    for outcome in failures:
        print(f"FAILED {outcome.scenario} at {outcome.point}: {outcome.answer}; {outcome.detail}; "
              f"leftovers {outcome.leftovers}")
    print(f"{'0 lost or inconsistent results' if not failures else f'{len(failures)} point(s) failed'}; "
          f"work in {root}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
