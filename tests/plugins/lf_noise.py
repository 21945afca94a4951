"""A finetuning scheme defined as a plugin, in one file: a linear head on Gaussian-noised images.

``SCHEMES.load_plugin("tests.plugins.lf_noise")`` registers it; ``run_finetune`` then trains it
with no other edit. It keeps SLF's recipe and frozen encoder and only changes the images.
"""

from __future__ import annotations

import torch

from benchmark.models import Classifier
from benchmark.schemes import SCHEMES, FinetuneConfig
from benchmark.schemes.slf import StandardLinear

SIGMA = 0.1
CALLS: list[torch.Tensor] = []  # the noisy batches the head was trained on, for the test to inspect


@SCHEMES.register("lf-noise", label="LF-noise", order=10)
class NoisyLinear(StandardLinear):
    """SLF on x + N(0, SIGMA^2), clipped to [0, 1]."""

    def inputs(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig
    ) -> torch.Tensor:
        noisy = (x + SIGMA * torch.randn_like(x)).clamp(0, 1)
        CALLS.append(noisy - x)
        return noisy
