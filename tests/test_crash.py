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


@pytest.mark.parametrize("name", ["prepare", "train", "evaluate", "ablation", "report", "explain", "predict"])
def test_a_killed_command_run_again_gives_the_uninterrupted_result(name, shared, tmp_path):
    env = harness.environment()
    scenario = next(s for s in harness.scenarios(shared) if s.name == name)
    reference, seconds = harness.measure(scenario, tmp_path, env)
    assert reference, f"{name}: the reference run published nothing the scenario names"
    for point in harness.kill_points(scenario, seconds, POINTS_PER_COMMAND, seed=0):
        outcome = harness.try_point(scenario, point, tmp_path, env, reference)
        assert outcome.ok, outcome
