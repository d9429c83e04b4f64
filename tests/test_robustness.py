"""`hegl robustness` (hegl_cli.apps.robustness): common random noise across runs and sigmas."""

from __future__ import annotations

import numpy as np
import torch


def test_robustness_noise_is_common_across_sigmas():
    """The docstring's promise: one standard normal field per (seed, draw, image), scaled by sigma."""
    from hegl_cli.apps.robustness import gaussian_noise

    images = torch.full((3, 1, 16, 16), 0.5)
    small = gaussian_noise(0.01, seed=4, draw=1)(images, np.array([0, 5, 9])) - 0.5
    large = gaussian_noise(0.02, seed=4, draw=1)(images, np.array([0, 5, 9])) - 0.5
    torch.testing.assert_close(large, 2 * small, rtol=1e-4, atol=1e-6)
    other = gaussian_noise(0.01, seed=4, draw=2)(images, np.array([0, 5, 9])) - 0.5
    assert not torch.allclose(other, small)
