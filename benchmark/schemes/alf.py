"""ALF, adversarial linear finetuning: a linear head on PGD examples, the encoder frozen.

The examples are PGD-10 (step 2/255, eps 8/255, uniform random start) on cross-entropy, made
against the current model in eval mode at every step. The recipe is SLF's (``docs/protocol.md``).
"""

from __future__ import annotations

import torch

from attacks.pgd import perturb_ce
from benchmark.models import Classifier
from benchmark.schemes import SCHEMES, FinetuneConfig
from benchmark.schemes.slf import StandardLinear


@SCHEMES.register("alf", label="ALF", order=1)
class AdversarialLinear(StandardLinear):
    """SLF on PGD examples of the batch (``cfg.attack_steps`` steps of ``cfg.attack_step``)."""

    def inputs(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig
    ) -> torch.Tensor:
        return perturb_ce(model, x, y, cfg.eps, cfg.attack_step, cfg.attack_steps)
