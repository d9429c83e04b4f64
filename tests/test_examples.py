"""The diagnosis scripts under examples/ keep working as the generator grows (they import its internals)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("member", ["v2", "tags", "inmask"])
def test_cue_diagnosis_toggling_every_cue_reproduces_the_twin(trained_run, member):
    """Toggling all cues of a captured test image gives the generator's own twin; the per-cue table
    has one row per cue of the member (the script broke when members other than v2 arrived)."""
    from hegl_cli.data.benchmark import generator as synthetic
    from hegl_cli.engine.checkpoint import load_run
    from hegl_cli.models.inference import predict_images

    cue = _load("cue_diagnosis")
    cases = cue.clean_test_images(3, seed=0, member=member)
    spec = synthetic.SyntheticSpec(member=member)
    bench = synthetic.MEMBERS[member]
    for i, (img, bits, seed, kwargs) in enumerate(cases):
        generated = synthetic.generate_case((spec, "test", i))
        np.testing.assert_array_equal(synthetic.render_cues(img, bits, seed, **kwargs), generated["image"])
        np.testing.assert_array_equal(synthetic.render_cues(img, bits ^ bench.all_cues, seed, **kwargs),
                                      generated["twin"])

    result = cue.reliance_by_cue(trained_run, cases, member)
    assert list(result) == [*bench.cues, "all"]
    loaded = load_run(trained_run, "best", None, "cpu")

    def probs(key: str) -> np.ndarray:
        images = torch.stack([cue.as_cached(synthetic.generate_case((spec, "test", i))[key], loaded.image_size)
                              for i in range(len(cases))])[:, None]
        return predict_images(loaded.model, images, loaded.device)[0].numpy()

    twin_reliance = float(np.abs(probs("image") - probs("twin")).mean())
    assert result["all"]["mean"] == pytest.approx(twin_reliance, abs=1e-6)


def test_methods_table_gives_mean_and_std_over_seeds_per_cell_and_method(tmp_path):
    """Two seeds of one cell: the row holds their mean ± std (ddof 1) and counts the flagged seeds."""
    import json

    table = _load("methods_table")
    for seed, (energy, flagged) in enumerate([(0.2, True), (0.4, False)]):
        run = tmp_path / f"a1_b0_s{seed}" / "eval"
        run.mkdir(parents=True)
        methods = {"ig": {"energy_in_mask": energy, "energy_uniform": 0.1, "pointing_game": 1.0,
                          "deletion_gain": 0.01 * seed, "insertion_gain": 0.0}}
        sanity = {"ig": {"final_similarity": 0.9, "flagged": flagged}}
        (run / "test.json").write_text(json.dumps({"methods": {"methods": methods}, "sanity": {"methods": sanity}}))
    (tmp_path / "latest").symlink_to(tmp_path / "a1_b0_s0")
    rows = table.run_rows(tmp_path)
    assert [(r["cell"], r["seed"]) for r in rows] == [("a1_b0", 0), ("a1_b0", 1)]
    line = table.table(rows).splitlines()[-1]
    assert line == ("| a1_b0 | ig | 2 | 0.300 ± 0.141 (0.100 ± 0.000) | 1.000 ± 0.000 | 0.005 ± 0.007 "
                    "| 0.000 ± 0.000 | 0.900 ± 0.000 (1/2) |")
