"""The kill-point harness: every command killed at an instant of its run, then run again.

For each command a :class:`Scenario` builds its inputs in a fresh folder, runs it once without
interruption (the reference), then, per kill point, runs it in a new copy of the inputs, kills its
process group with SIGKILL (at a delay spread over the reference's duration, or at a named point
of ``HEGL_CRASH_AT``), runs the same command again, and compares what it left with the reference.

A rerun passes when it ends with the reference's result (the digests a scenario takes of what the
command publishes), or when it says in one line what to do (exit 2) and doing that (``--resume``
or ``--force``, the only two answers hegl gives) ends with the reference's result. Whatever the
command published is never torn: no temporary file or partial folder of hegl's outlives the rerun.

Used by ``tests/test_crash.py`` (a few points per command) and ``benchmarks/crash_points.py``
(the long variant: 20 points per command, and the table in the README).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TINY = [
    "data.image_size=32", "model.encoder_kwargs={patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
    "model.text_encoder=none", "model.decoder_dim=32", "model.decoder_layers=2", "model.decoder_heads=2",
    "model.decoder_ffn=64", "model.head=per_class", "train.batch_size=8", "train.workers=0", "eval.batch_size=16",
    "train.deterministic=true", "eval.bootstrap=20",
]
PREPARE = ["--image-size", "32", "--workers", "1", "--set", "data.synthetic_train=24", "--set", "data.synthetic_test=8",
           "--set", "data.synthetic_source_size=32"]
VOLATILE = ("seconds", "time", "wall", "date", "created", "since", "elapsed")  # keys that differ run to run


def sets(items: list[str]) -> list[str]:
    return [part for item in items for part in ("--set", item)]


def hegl(*args: str) -> list[str]:
    return [sys.executable, "-m", "hegl_cli", "-q", *args]


def digest_file(path: Path) -> str:
    """A file's digest; JSON and JSON-lines files without the keys that hold times."""
    data = path.read_bytes()
    if path.suffix == ".html":  # the page says when it was made
        data = re.sub(rb"made by hegl [^;<]* on [0-9: -]+;", b"made by hegl", data)
    if path.suffix in (".json", ".jsonl"):
        try:
            lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()] \
                if path.suffix == ".jsonl" else [json.loads(data)]
            data = json.dumps([strip_volatile(x) for x in lines], sort_keys=True).encode()
        except ValueError:
            pass
    return hashlib.sha256(data).hexdigest()


def strip_volatile(value):
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def digests(root: Path, names: list[str]) -> dict[str, str]:
    """``{relative path: digest}`` of the files under ``root`` matching the glob patterns ``names``."""
    found = {}
    for pattern in names:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and not path.name.startswith(".hegl"):  # locks name their holder
                found[str(path.relative_to(root))] = digest_file(path)
    return found


def leftovers(root: Path) -> list[str]:
    """hegl's own temporary files and partial folders left anywhere under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if (p.name.startswith(".") and p.name.endswith(".tmp")) or ".partial-" in p.name
                  or ".old-" in p.name)


@dataclass
class Scenario:
    """One command: its inputs (``setup`` into a folder), its argv there, and what its result is."""

    name: str
    argv: list[str]
    result: list[str]  # glob patterns (relative to the folder) of what the command publishes
    setup: Callable[[Path], None] = lambda folder: None
    points: list[str] = field(default_factory=list)  # named kill points (HEGL_CRASH_AT) worth trying


@dataclass
class Outcome:
    scenario: str
    point: str
    killed: bool  # False when the command finished before the kill
    answer: str  # what the rerun did: "completed", "--resume", "--force"
    same: bool
    leftovers: list[str]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.same and not self.leftovers


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_killed(argv: list[str], cwd: Path, env: dict[str, str], delay: float | None) -> bool:
    """Start the command; SIGKILL its whole process group after ``delay`` seconds (None: it kills itself
    at a named point). True when it was killed before it finished."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if delay is None:
        return proc.wait(timeout=600) == -signal.SIGKILL
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def rerun(scenario: Scenario, folder: Path, env: dict[str, str]) -> tuple[str, str]:
    """The same command again; if it answers in one line with --resume or --force, that answer.
    Returns (what happened, its output when it failed)."""
    done = run(scenario.argv, folder, env)
    if done.returncode == 0:
        return "completed", ""
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 2 or len(lines) != 1:
        return "failed", (done.stdout + done.stderr)[-2000:]
    for flag in ("--resume", "--force"):
        if flag in lines[0] and flag not in scenario.argv:
            again = run(scenario.argv + [flag], folder, env)
            return (flag, "") if again.returncode == 0 else ("failed", (again.stdout + again.stderr)[-2000:])
    return "failed", lines[0]


def measure(scenario: Scenario, root: Path, env: dict[str, str]) -> tuple[dict[str, str], float]:
    """The reference: the scenario run once without interruption (its result, its duration)."""
    folder = root / f"{scenario.name}-reference"
    folder.mkdir(parents=True)
    scenario.setup(folder)
    start = time.perf_counter()
    done = run(scenario.argv, folder, env)
    if done.returncode != 0:
        raise RuntimeError(f"{scenario.name}: the uninterrupted run failed: {(done.stdout + done.stderr)[-2000:]}")
    return digests(folder, scenario.result), time.perf_counter() - start


def kill_points(scenario: Scenario, duration: float, count: int, seed: int) -> list[str]:
    """The named points first, then instants spread over the run (seeded), as 'delay:<seconds>'."""
    rng = random.Random(seed)
    named = scenario.points[:count]
    spread = [f"delay:{duration * (k + rng.random()) / max(count - len(named), 1):.2f}"
              for k in range(count - len(named))]
    return named + spread


def try_point(scenario: Scenario, point: str, root: Path, env: dict[str, str], reference: dict[str, str]
              ) -> Outcome:
    """Kill the scenario at ``point`` in a fresh folder, run it again, compare with ``reference``."""
    folder = root / f"{scenario.name}-{point.replace(':', '_').replace('/', '_')}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    scenario.setup(folder)
    if point.startswith("delay:"):
        killed = run_killed(scenario.argv, folder, env, float(point.split(":", 1)[1]))
    else:
        killed = run_killed(scenario.argv, folder, {**env, "HEGL_CRASH_AT": point}, None)
    answer, detail = rerun(scenario, folder, env)
    got = digests(folder, scenario.result)
    same = answer != "failed" and got == reference
    if answer != "failed" and not same:
        differ = sorted(k for k in set(got) | set(reference) if got.get(k) != reference.get(k))
        detail = f"differs from the uninterrupted run: {differ[:5]}"
    return Outcome(scenario.name, point, killed, answer, same, leftovers(folder), detail)


def environment() -> dict[str, str]:
    """The commands' environment: one thread each (repeatable timing), offline, no progress bars."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "OMP_WAIT_POLICY": "PASSIVE"}


def scenarios(shared: Path) -> list[Scenario]:
    """prepare, train, evaluate, ablation, report, explain and predict on tiny data. ``shared`` holds a
    tiny cache and a trained run (made once by :func:`make_shared`) that the readers copy."""

    def with_run(folder: Path) -> None:
        shutil.copytree(shared / "cache", folder / "cache")
        shutil.copytree(shared / "runs", folder / "runs", symlinks=True)

    def with_cache(folder: Path) -> None:
        shutil.copytree(shared / "cache", folder / "cache")

    train = hegl("train", "--name", "r", "--runs-dir", "runs", *sets(TINY + ["data.path=cache", "train.epochs=3"]))
    image = "cache/source/test/te00000.png"
    return [
        Scenario("prepare", hegl("prepare", "--out", "cache", *PREPARE), ["cache/**/*"],
                 points=["prepare:marker-removed", "write:manifest.json:complete"]),
        Scenario("train", train, ["runs/r/*.safetensors", "runs/r/metrics.jsonl", "runs/r/best.json"], with_cache,
                 points=["checkpoint:last:between-weights-and-meta", "train:between-last-and-best",
                         "train:between-checkpoints-and-state", "write:state.pt:complete", "train:step@4"]),
        Scenario("evaluate", hegl("evaluate", "runs/r"), ["runs/r/eval/test.json", "runs/r/eval/test.csv"], with_run,
                 points=["write:test.json:complete"]),
        Scenario("ablation", hegl("ablation", "--grid", "0,0", "--seeds", "1", "--name", "a", "--out-root", "abl",
                                  *sets(TINY + ["data.path=cache", "train.epochs=2"])),
                 ["abl/a/runs/*/cell.json", "abl/a/results.csv"], with_cache,
                 points=["write:cell.json:complete", "write:results.csv:complete"]),
        Scenario("report", hegl("report", "runs/r", "--gallery", "1"), ["runs/r/report.html"], with_run,
                 points=["write:report.html:complete"]),
        Scenario("explain", hegl("explain", image, "--run", "runs/r", "--out", "ex"), ["ex/**/*.json"], with_run,
                 points=["write:predictions.json:complete"]),
        Scenario("predict", hegl("predict", "cache/source/test", "--run", "runs/r", "--out", "pred.csv"),
                 ["pred.csv"], with_run, points=["write:pred.csv:complete"]),
    ]


def make_shared(shared: Path, env: dict[str, str]) -> None:
    """The tiny cache (with its generated source) and a trained run the reading commands start from."""
    shared.mkdir(parents=True, exist_ok=True)
    for argv in (hegl("prepare", "--out", "cache", *PREPARE),
                 hegl("train", "--name", "r", "--runs-dir", "runs",
                      *sets(TINY + ["data.path=cache", "train.epochs=2"]))):
        done = run(argv, shared, env)
        if done.returncode != 0:
            raise RuntimeError((done.stdout + done.stderr)[-2000:])
