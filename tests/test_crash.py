"""Killed at any instant, nothing lost: each command killed at a few points (named ones inside its
writes, and one instant in its run), then run again, ends with the uninterrupted result and leaves
no temporary file behind (tests/crash_harness.py; benchmarks/crash_points.py runs 20 points each)."""

from __future__ import annotations

import pytest

import crash_harness as harness

pytestmark = pytest.mark.slow

POINTS_PER_COMMAND = 2  # in CI: the first named point and one instant; the long variant runs 20


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
    scenario, result, seconds = reference(name)
    assert result, f"{name}: the reference run published nothing the scenario names"
    for point in harness.kill_points(scenario, seconds, POINTS_PER_COMMAND, seed=0):
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
