"""Dual-BN finetuning models: two BatchNorm branches during training, one classifier at the end.

Dual-BN AFF (DynACL, AIR, and the RobustSSL benchmark's ``--dualBN 1``) finetunes the whole
network with clean images through the "normal" BN branch and adversarial ones through the
adversarial branch ("pgd"): convolutions and the linear layer are shared, each branch keeps its
own affine parameters and statistics. Both branches start from the pretrained encoder's branches
of the same names (strict key matching). For testing, the model becomes the plain single-BN
:class:`~benchmark.models.Classifier` of its adversarial branch (:func:`to_single_bn`), so
``load_classifier`` and evaluation never see the dual form.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.models import (
    CheckpointMismatch,
    Classifier,
    ResNet,
    branch_state_dict,
    load_strict,
)

CLEAN_BRANCH = "normal"


class DualBNClassifier(nn.Module):
    """Encoder with BN branches (``clean_branch``, ``branch``) + one linear layer (zero-initialised).

    ``model(x)`` runs ``branch``, the one that is kept (so attacks and validation see the model
    that will be saved); ``model(x, clean_branch)`` runs the clean branch.
    """

    def __init__(self, encoder: ResNet, fc: nn.Linear, branch: str, clean_branch: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc = fc
        self.branch = branch
        self.clean_branch = clean_branch

    def forward(self, x: torch.Tensor, branch: str | None = None) -> torch.Tensor:
        return self.fc(self.encoder(x, branch or self.branch))


def _keep_branches(
    state: dict[str, torch.Tensor], keep: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """``state`` without the BN entries of branches other than ``keep`` (names unchanged)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-3] == "bn" and parts[-2] not in keep:
            continue
        out[key] = value
    return out


def dual_bn_from_encoder(
    encoder: ResNet, branch: str, num_classes: int, clean_branch: str = CLEAN_BRANCH
) -> DualBNClassifier:
    """The dual-BN finetuning model: the encoder's BN branches ``clean_branch`` and ``branch``
    (both must exist and differ; any other branch, e.g. AdvCL's "pgd_ce", is dropped), loaded
    with strict key matching, and a zero-initialised linear layer."""
    have = encoder.branches or ()
    if branch == clean_branch:
        raise CheckpointMismatch(f"dual-BN finetuning needs two branches; both are {branch!r}")
    missing = [b for b in (clean_branch, branch) if b not in have]
    if missing:
        raise CheckpointMismatch(
            f"dual-BN finetuning needs BN branches {clean_branch!r} and {branch!r}; the encoder "
            f"has {', '.join(map(repr, have)) or 'none'}"
        )
    dual = ResNet(encoder.config, branches=(clean_branch, branch))
    load_strict(
        dual, _keep_branches(encoder.state_dict(), (clean_branch, branch)), "encoder branches"
    )
    fc = nn.Linear(dual.feature_dim, num_classes)
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    return DualBNClassifier(dual, fc, branch, clean_branch)


def to_single_bn(model: DualBNClassifier) -> Classifier:
    """The single-BN classifier of ``model``'s kept branch (strict keys), on ``model``'s device."""
    clf = Classifier(model.encoder.config, model.fc.out_features)
    state = {
        f"encoder.{k}": v
        for k, v in branch_state_dict(model.encoder.state_dict(), model.branch).items()
    }
    state.update({f"fc.{k}": v for k, v in model.fc.state_dict().items()})
    load_strict(clf, state, "dual-BN model's branch")
    return clf.to(model.fc.weight.device)
