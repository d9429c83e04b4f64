"""Killed at any instant, nothing lost: each command killed at a named point inside its writes, then
run again, ends with the uninterrupted result and leaves no temporary file behind; the same after a
real write past a file size limit (tests/crash_harness.py; benchmarks/crash_points.py, the long
variant, kills each command at 20 points, instants of its run included)."""

from __future__ import annotations

import pytest

import crash_harness as harness

pytestmark = pytest.mark.slow

# In CI each command is killed at its first named point (inside a write), train also between its two
# checkpoints; benchmarks/crash_points.py (the long variant) adds 20 points each, instants included.
POINTS = {"train": ["checkpoint:last:between-weights-and-meta", "train:between-last-and-best"]}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash-shared")
    harness.make_shared(root, harness.environment())
    return root


@pytest.fixture(scope="module")
def reference(shared, tmp_path_factory):
    """``reference(name)``: (the scenario, its uninterrupted result, its seconds), run once per module."""
    done: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("crash-reference")

    def get(name: str) -> tuple:
        if name not in done:
            scenario = next(s for s in harness.scenarios(shared) if s.name == name)
            done[name] = (scenario, *harness.measure(scenario, root, harness.environment()))
        return done[name]

    return get


@pytest.mark.parametrize("name", ["prepare", "train", "evaluate", "ablation", "report", "explain", "predict"])
def test_a_killed_command_run_again_gives_the_uninterrupted_result(name, reference, tmp_path):
    env = harness.environment()
    scenario, result, _ = reference(name)
    assert result, f"{name}: the reference run published nothing the scenario names"
    for point in POINTS.get(name, scenario.points[:1]):
        outcome = harness.try_point(scenario, point, tmp_path, env, result)
        assert outcome.ok, outcome


FILE_SIZE_LIMITS = {"prepare": 16_000, "train": 100_000, "evaluate": 20_000, "report": 100_000}  # bytes, each below
# the largest file the command writes (images.npy, a checkpoint, the reliability diagram, the page)


@pytest.mark.parametrize("name", sorted(FILE_SIZE_LIMITS))
def test_a_full_disk_is_one_line_and_a_rerun_gives_the_uninterrupted_result(name, reference, tmp_path):
    """A real write past RLIMIT_FSIZE (EFBIG, as a full disk gives ENOSPC): exit 2, one line naming the
    file, nothing torn left behind; the same command with room ends as an uninterrupted run."""
    import resource
    import subprocess

    env = harness.environment()
    scenario, result, _ = reference(name)
    folder = tmp_path / f"{name}-full"
    folder.mkdir()
    scenario.setup(folder)
    limit = FILE_SIZE_LIMITS[name]
    done = subprocess.run(scenario.argv, cwd=folder, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0].startswith("error: cannot write ") and "over the size limit" in lines[0], lines[0]
    assert not harness.leftovers(folder)
    answer, detail = harness.rerun(scenario, folder, env)
    assert answer != "failed", detail
    assert harness.digests(folder, scenario.result) == result
