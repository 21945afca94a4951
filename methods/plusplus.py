"""DynACL++ and AIR++ (DynACL-AIR++, ACL-AIR++): a base method's pretraining, then the released
post-processing "LP-AFT" (pseudo-labels, linear probing, adversarial finetuning), as a pipeline stage.

A ++ method does not pretrain itself: its pretraining is the base method's pretrain stage (same
preset, data, seed and parameters, so a suite that runs ``dynacl`` and ``dynacl++`` pretrains once),
and :mod:`benchmark.postprocess` runs the post-processing on that encoder. This module holds what
the releases fix, :class:`PostRecipe` (WAVE2.md sections 2, 3 and 0.2-0.4):

* **DynACL++** (PKU-ML/DYNACL ``assign_label.py`` + ``LPAFT_AFF.py``, the dual-BN form RobustSSL
  needs): k-means (``kmeans_pytorch``, Euclidean, random init, tol 1e-4) with **10 clusters for
  every dataset** on the pooled features of the "normal" branch (eval mode, un-augmented train
  images); LP: 10 epochs of CE on the pseudo-labels, fc only (zero-init, #classes-way), model in
  eval mode, "pgd" branch, SGD lr 0.01 momentum 0.9 wd 1e-4; AFT: 25 epochs of TRADES (beta 6,
  10 steps of 2/255, eps 8/255, start x itself, clean reference through "pgd", attack in eval mode,
  loss in train mode, both through "pgd") over all parameters, SGD lr 0.1 momentum 0.9 wd 1e-4,
  milestones 10 and 20; batch 512 drop_last, RandomCrop(pad 4) + flip, for LP and AFT alike. The
  "normal" branch is left untouched.
* **AIR++** (GodXuxilie/Enhancing_ACL_via_AIR ``LP-AFF.py``): the same, except #classes clusters
  with tol 1e-5, and ``finetuning_utils.trades_loss_dual``'s attack: start x + 0.001 N(0, 1) (not
  clamped) and the clean reference through **"normal"** (``natural_mode`` is ignored there).

The releases seed nothing (``np.random.choice`` picks the k-means centres): acbench seeds the
stage from the run seed. ``validate()``'s throw-away linear heads are monitoring only (not run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from benchmark.errors import ConfigError, check_choice
from methods import register_method
from methods.air import ACLAIR, DynACLAIR
from methods.base import Method
from methods.dynacl import DynACL

POST_VARIANTS = ("dynacl++", "air++")
ATTACK_STARTS = ("x", "gaussian")  # x itself (DYN utils.trades_loss_dual); x + 0.001 N(0, 1) (AIR)


@dataclass(frozen=True)
class PostRecipe:
    """The released post-processing ("LP-AFT") of a ++ method. ``clusters=None``: the dataset's
    number of classes. The LP head is #classes-way (``nn.Linear(512, num_classes)``, zero-init)
    whatever the number of clusters. Presets scale this (:mod:`benchmark.postprocess`)."""

    variant: str
    clusters: int | None  # k-means clusters; None: the number of classes
    kmeans_tol: float  # stop when (sum_k |c_k - c_k'|)^2 < tol
    lp_epochs: int = 10
    lp_lr: float = 0.01
    aft_epochs: int = 25
    aft_lr: float = 0.1
    milestones: tuple[int, ...] = (10, 20)  # AFT lr x0.1 (LP: constant)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 512  # LP and AFT, drop_last
    crop_padding: int = 4
    flip: bool = True
    trades_beta: float = 6.0
    attack_steps: int = 10
    attack_step: float = 2 / 255
    eps: float = 8 / 255
    attack_start: str = "x"
    reference_branch: str = "pgd"  # the attack's clean reference (the loss's clean pass is always "pgd")
    feature_branch: str = "normal"  # k-means features
    branch: str = "pgd"  # LP and AFT; 'normal' is kept untouched
    source: str = ""

    def __post_init__(self) -> None:
        check_choice("post-processing variant", self.variant, POST_VARIANTS)
        check_choice("attack_start", self.attack_start, ATTACK_STARTS)
        if self.clusters is not None and self.clusters < 2:
            raise ConfigError(f"k-means needs at least 2 clusters, got {self.clusters}")
        if not self.kmeans_tol > 0:
            raise ConfigError(f"kmeans_tol must be > 0, got {self.kmeans_tol}")
        if min(self.lp_epochs, self.aft_epochs, self.batch_size, self.attack_steps) < 1:
            raise ConfigError("post-processing epochs, batch size and attack steps must be >= 1")
        if not (0 < self.eps < 1 and 0 < self.attack_step < 1):
            raise ConfigError("post-processing eps and attack step must be in (0, 1)")

    def replace(self, **changes: Any) -> PostRecipe:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def released_post_recipe(variant: str) -> PostRecipe:
    """The released LP-AFT of ``variant`` ("dynacl++" or "air++"), every dataset alike."""
    if variant == "dynacl++":
        return PostRecipe(
            "dynacl++", clusters=10, kmeans_tol=1e-4,
            source="PKU-ML/DYNACL assign_label.py (kmeans_pytorch, 10 clusters, tol 1e-4) + LPAFT_AFF.py "
                   "(LP 10 epochs lr 0.01; AFT 25 epochs TRADES lr 0.1, milestones 10/20; batch 512; "
                   "utils.trades_loss_dual natural_mode='pgd', start x)",
        )
    check_choice("post-processing variant", variant, POST_VARIANTS)
    return PostRecipe(
        "air++", clusters=None, kmeans_tol=1e-5, attack_start="gaussian", reference_branch="normal",
        source="GodXuxilie/Enhancing_ACL_via_AIR LP-AFF.py (kmeans_pytorch, #classes clusters, tol 1e-5; "
               "LP 10 epochs lr 0.01; AFT 25 epochs TRADES lr 0.1, milestones 10/20; batch 512; "
               "finetuning_utils.trades_loss_dual: start x + 0.001 N(0,1), clean reference through 'normal')",
    )


class PlusPlus:
    """What a ++ method adds to its base method's class: the base method whose pretraining it
    shares, and the post-processing variant. Its parameters are the base method's (they go to
    that pretraining); its training step is the base method's (never run by the pipeline)."""

    base_method: ClassVar[str] = ""
    post_variant: ClassVar[str] = ""

    def post_recipe(self, dataset: str | None = None) -> PostRecipe:
        return released_post_recipe(self.post_variant)

    def describe(self) -> dict[str, Any]:
        out = super().describe()  # type: ignore[misc]  (the base method's)
        recipe = self.post_recipe(getattr(self, "dataset", None)).to_dict()
        return {**out, "pretraining": self.base_method, "post_processing": recipe}


def is_post_processed(method: type | Method) -> bool:
    """True for a ++ method (its pretraining is ``base_method``'s, then the post-processing stage)."""
    cls = method if isinstance(method, type) else type(method)
    return issubclass(cls, PlusPlus) and bool(cls.base_method)


@register_method("dynacl++")
class DynACLPlusPlus(PlusPlus, DynACL):
    paper = "Luo et al., ICLR 2023"
    summary = ("DynACL, then LP-AFT: k-means (10 clusters) pseudo-labels from the clean branch, linear probe, "
               "TRADES finetuning of the 'pgd' branch; both BN branches kept")
    base_method = "dynacl"
    post_variant = "dynacl++"


@register_method("dynacl-air++")
class DynACLAIRPlusPlus(PlusPlus, DynACLAIR):
    paper = "Xu et al., NeurIPS 2023"
    summary = ("DynACL-AIR, then AIR's LP-AFF: k-means (#classes clusters) pseudo-labels, linear probe, "
               "TRADES finetuning of the 'pgd' branch (clean reference through 'normal'); both BN branches kept")
    base_method = "dynacl-air"
    post_variant = "air++"


@register_method("acl-air++")
class ACLAIRPlusPlus(PlusPlus, ACLAIR):
    paper = "Xu et al., NeurIPS 2023"
    summary = ("ACL-AIR, then AIR's LP-AFF (as dynacl-air++); LP-AFF.py takes any AIR checkpoint, but the "
               "RobustSSL zoo has no ACL-AIR++ model")
    base_method = "acl-air"
    post_variant = "air++"
