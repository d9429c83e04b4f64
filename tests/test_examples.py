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
    from hegl_cli.data.formats import synthetic
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
