"""``clean``: the test images themselves (clean accuracy)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attacks.base import ATTACKS, check_images, check_options


class Clean:
    """The identity attack: accuracy on unperturbed images."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return x

    def settings(self) -> dict[str, Any]:
        return {}


@ATTACKS.register("clean", label="clean", threat_model=None, order=0)
def clean(**options: Any) -> Clean:
    check_options("clean", options, [])
    return Clean()
