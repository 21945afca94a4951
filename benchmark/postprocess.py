"""The ``lpaft`` stage: DynACL++'s and AIR++'s post-processing of a pretrained dual-BN encoder.

    base pretraining (dynacl / dynacl-air / acl-air) -> lpaft -> finetune (SLF / ALF / AFF) -> evaluate

The releases (``methods.plusplus``; WAVE2.md sections 2, 3, 0.2-0.4), in order:

1. **Pseudo-labels.** Pooled features of the "normal" branch, eval mode, un-augmented training
   images (``data.pretrain_x``, after the preset's ``train_limit``); k-means as ``kmeans_pytorch``
   (:mod:`benchmark.kmeans`), seeded from the run seed (the releases set none).
2. **LP.** A zero-initialised #classes-way linear layer on the "pgd" branch, model in eval mode,
   CE on the pseudo-labels, only the layer trained (SGD, constant lr).
3. **AFT.** TRADES on the pseudo-labels over all parameters (SGD, MultiStepLR stepped per epoch):
   the attack in eval mode (:func:`trades_attack`), the loss in train mode with clean and
   adversarial images both through "pgd" (:func:`trades_objective`). The "normal" branch takes no
   part in a train-mode forward and gets no gradient: it leaves the stage bit for bit as it came.

LP and AFT share one loader: batch ``batch_size``, drop_last, RandomCrop(pad) + flip. The output,
``<results>/runs/lpaft/<key>/encoder.pt``, is an ordinary dual-BN encoder checkpoint (no projection
head; ``finetune_branch`` "pgd"), so SLF, ALF and dual-BN AFF load it as any pretrained encoder.
The releases' ``validate()`` heads (monitoring only) are not run. CPU presets scale the stage as
they scale finetuning (:func:`scaled_recipe`); every change is a recorded deviation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from attacks.base import eval_mode, project_linf
from benchmark.augment import CropFlip
from benchmark.checkpoints import ENCODER, load_encoder
from benchmark.config import Preset
from benchmark.data import Dataset
from benchmark.devices import to_layout
from benchmark.errors import ConfigError
from benchmark.io import CheckpointError, atomic_write_json, save_checkpoint
from benchmark.kmeans import kmeans
from benchmark.models import CheckpointMismatch, ResNet
from benchmark.schemes import get_scheme
from benchmark.schemes.aff import trades_loss
from benchmark.schemes.dual_bn import DualBNClassifier, dual_bn_from_encoder
from benchmark.stage import RunOptions, Stage, StageRun, dataset_for
from methods import method_class
from methods.plusplus import PostRecipe, is_post_processed

KIND = "lpaft"
LABELS = "pseudo_labels.pt"
FEATURE_BATCH = 5000  # assign_label.py's loader batch (eval mode: no effect on the values)


# ---- the released pieces ------------------------------------------------------------------------


@torch.no_grad()
def pooled_features(encoder: ResNet, images: torch.Tensor, branch: str, device: torch.device) -> torch.Tensor:
    """Pooled features [n, d] of uint8 ``images`` through BN ``branch``, eval mode (``assign_label.py``)."""
    with eval_mode(encoder):
        out = [encoder(images[i : i + FEATURE_BATCH].to(device).float().div_(255), branch)
               for i in range(0, len(images), FEATURE_BATCH)]
    return torch.cat(out)


def trades_attack(model: DualBNClassifier, x: torch.Tensor, recipe: PostRecipe) -> torch.Tensor:
    """``trades_loss_dual``'s inner maximisation, eval mode: ascend the summed
    KL(p_ref(x) || p_pgd(x_adv)) with signed steps, projected on the eps-ball and [0, 1].

    p_ref is the softmax of x through ``recipe.reference_branch`` ("pgd" in DYN's ``utils.py``,
    "normal" in AIR's ``finetuning_utils.py``); the releases recompute it at every step, in eval
    mode and without effect on the gradient (computed once here: same values). The start is x
    (DynACL++) or x + 0.001 N(0, 1), not clamped (AIR++)."""
    with eval_mode(model):
        with torch.no_grad():
            p_ref = F.softmax(model(x, recipe.reference_branch), dim=1)
        x_adv = x.detach()
        if recipe.attack_start == "gaussian":  # the release's draw: CPU float32, then moved
            x_adv = x_adv + 0.001 * torch.randn(x.shape).to(x.device)
        for _ in range(recipe.attack_steps):
            x_adv.requires_grad_(True)
            kl = attack_objective(model(x_adv, recipe.branch), p_ref)
            (grad,) = torch.autograd.grad(kl, [x_adv])
            x_adv = project_linf(x_adv.detach() + recipe.attack_step * torch.sign(grad), x, recipe.eps)
    return x_adv.detach()


def attack_objective(adv_logits: torch.Tensor, p_ref: torch.Tensor) -> torch.Tensor:
    """``nn.KLDivLoss(size_average=False)(log_softmax(adv_logits), p_ref)``: the summed KL."""
    return F.kl_div(F.log_softmax(adv_logits, dim=1), p_ref, reduction="sum")


def trades_objective(
    model: DualBNClassifier, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, recipe: PostRecipe
) -> torch.Tensor:
    """The AFT loss, train mode: CE(f(x)) + beta / B * sum KL(softmax f(x) || softmax f(x_adv)),
    f the "pgd" branch for both (the releases' ``natural_mode='pgd'``), gradient through both
    passes; clean pass first (the BN statistics' order)."""
    model.train()
    logits = model(x, recipe.branch)
    return trades_loss(logits, model(x_adv, recipe.branch), y, recipe.trades_beta)


# ---- presets --------------------------------------------------------------------------------------


def scaled_recipe(preset: Preset, released: PostRecipe, dataset: str) -> PostRecipe:
    """``released`` on ``paper``; on a CPU preset, scaled as the preset scales AFF finetuning:
    epochs (LP, AFT and the milestones) by the preset's AFF epochs / the released AFF's, the
    learning rates by its lr ratio, its attack steps, step and eps, its crop padding and flip, and
    the batch of the preset's pretraining (the releases' LP-AFT batch is their pretraining batch)."""
    if preset.name == "paper":
        return released
    paper_aff = get_scheme("aff").paper_config(dataset)
    aff = preset.finetune_config("aff", dataset)
    f = aff.epochs / paper_aff.epochs
    aft_epochs = max(1, round(released.aft_epochs * f))
    milestones = tuple(sorted({m for m in (round(m * f) for m in released.milestones) if 0 < m < aft_epochs}))
    lr = aff.lr / paper_aff.lr
    return released.replace(
        lp_epochs=max(1, round(released.lp_epochs * f)), aft_epochs=aft_epochs, milestones=milestones,
        lp_lr=released.lp_lr * lr, aft_lr=released.aft_lr * lr,
        batch_size=preset.pretrain_batch_size or released.batch_size,
        attack_steps=aff.attack_steps, attack_step=aff.attack_step, eps=aff.eps,
        crop_padding=aff.crop_padding, flip=aff.flip,
        source=f"{preset.name} preset (scaled from: {released.source})",
    )


def recipe_deviations(used: PostRecipe, released: PostRecipe) -> list[str]:
    """``lp-aft <field> <value> (released <value>)`` for every field a preset changed."""
    a, b = used.to_dict(), released.to_dict()
    return [f"lp-aft {k} {a[k]:.6g} (released {b[k]:.6g})" if isinstance(a[k], float)
            else f"lp-aft {k} {a[k]} (released {b[k]})" for k in a if k != "source" and a[k] != b[k]]


# ---- the two phases -------------------------------------------------------------------------------


def _batches(n: int, batch_size: int, seed: int, epoch: int, device: torch.device) -> list[torch.Tensor]:
    """A shuffled epoch of whole batches (drop_last; one batch of all when n < batch_size)."""
    bs = min(batch_size, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).to(device)
    return [perm[i * bs : (i + 1) * bs] for i in range(n // bs)]


def linear_probe(model: DualBNClassifier, images: torch.Tensor, labels: torch.Tensor, recipe: PostRecipe,
                 augment: CropFlip, seed: int) -> list[float]:
    """LP: the fc only, model in eval mode, CE on the pseudo-labels, constant lr; mean loss per epoch."""
    opt = torch.optim.SGD(model.fc.parameters(), lr=recipe.lp_lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    model.eval()
    history = []
    for epoch in range(1, recipe.lp_epochs + 1):
        losses = []
        for idx in _batches(len(images), recipe.batch_size, seed, epoch, images.device):
            x = augment(images[idx].float().div_(255))
            with torch.no_grad():  # the frozen encoder in eval mode: the same gradients for fc
                h = model.encoder(x, recipe.branch)
            loss = F.cross_entropy(model.fc(h), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        history.append(float(torch.stack(losses).mean()))
    return history


def adversarial_finetune(model: DualBNClassifier, images: torch.Tensor, labels: torch.Tensor,
                         recipe: PostRecipe, augment: CropFlip, seed: int) -> list[float]:
    """AFT: TRADES over all parameters (the "normal" BN gets no gradient: SGD skips it)."""
    opt = torch.optim.SGD(model.parameters(), lr=recipe.aft_lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(recipe.milestones), gamma=0.1)
    history = []
    for epoch in range(1, recipe.aft_epochs + 1):
        losses = []
        for idx in _batches(len(images), recipe.batch_size, seed, 1000 + epoch, images.device):
            x = augment(images[idx].float().div_(255))
            x_adv = trades_attack(model, x, recipe)
            loss = trades_objective(model, x, x_adv, labels[idx], recipe)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        sched.step()
        mean = float(torch.stack(losses).mean())
        if mean != mean or mean in (float("inf"), float("-inf")):
            raise FloatingPointError(f"lp-aft: the AFT loss became non-finite at epoch {epoch}")
        history.append(mean)
    return history


# ---- the stage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostProcessStage(Stage):
    """LP-AFT of the ++ method ``method`` on the encoder its ``base`` stage leaves (the base
    method's pretraining, shared with that method's own runs)."""

    kind = KIND

    base: Stage  # a PretrainStage of the base method (or any stage that leaves its encoder.pt)
    opts: RunOptions
    method: str
    preset: Preset
    dataset: str
    seed: int

    def __post_init__(self) -> None:
        if not is_post_processed(method_class(self.method)):
            raise ValueError(f"method {self.method!r} has no post-processing stage")

    def released(self) -> PostRecipe:
        return method_class(self.method)(dataset=self.dataset).post_recipe(self.dataset)

    def recipe(self) -> PostRecipe:
        return scaled_recipe(self.preset, self.released(), self.dataset)

    def deviations(self) -> list[str]:
        return recipe_deviations(self.recipe(), self.released())

    def upstream(self) -> dict[str, Stage]:
        return {"pretrain": self.base}

    def config(self) -> dict[str, Any]:
        return {"method": self.method, "recipe": self.recipe().to_dict(), "dataset": self.dataset,
                "seed": self.seed, "image_size": self.preset.image_size, "train_limit": self.preset.train_limit,
                "kmeans": "kmeans_pytorch 0.3 (benchmark.kmeans), init seeded from the run seed"}

    def data(self) -> Dataset:
        return dataset_for(self.opts, self.dataset, self.preset.image_size)

    def images(self) -> torch.Tensor:
        data, limit = self.data(), self.preset.train_limit
        return data.pretrain_x[:limit] if limit else data.pretrain_x

    def build(self, opts: RunOptions, upstream: dict[str, str], device: torch.device | str = "cpu"):
        """(the dual-BN model with a fresh #classes-way fc, the base checkpoint); a checkpoint
        without the two branches is a one-line error naming the file."""
        path = opts.store.dir(self.base.kind, upstream["pretrain"]) / ENCODER
        encoder, ck = load_encoder(path, device)
        recipe = self.recipe()
        try:
            model = dual_bn_from_encoder(encoder, recipe.branch, self.data().num_classes, recipe.feature_branch)
        except CheckpointMismatch as e:
            raise CheckpointError(f"{path}: {e}") from None
        return model.to(device), ck

    def prepare(self, opts: RunOptions, upstream: dict[str, str]) -> None:
        images, recipe = self.images(), self.recipe()
        k = recipe.clusters or self.data().num_classes
        if k > len(images):
            raise ConfigError(f"lp-aft: {k} k-means clusters need at least {k} images, the data has {len(images)}")
        self.build(opts, upstream)

    def run(self, run: StageRun) -> dict[str, Any]:
        device, recipe, data = run.opts.torch_device(), self.recipe(), self.data()
        t0 = time.time()
        torch.manual_seed(self.seed)
        model, ck = self.build(run.opts, run.upstream, device)
        images = self.images().to(device)
        k = recipe.clusters or data.num_classes
        feats = pooled_features(model.encoder, images, recipe.feature_branch, device)
        km = kmeans(feats, k, recipe.kmeans_tol, generator=torch.Generator().manual_seed(self.seed))
        labels = km.labels.to(device)
        t_kmeans = time.time() - t0
        torch.save(km.labels.cpu(), run.dir / LABELS)
        model = to_layout(model, device)
        augment = CropFlip(data.image_size, padding=recipe.crop_padding, flip=recipe.flip).to(device)
        t1 = time.time()
        lp = linear_probe(model, images, labels, recipe, augment, self.seed)
        t2 = time.time()
        aft = adversarial_finetune(model, images, labels, recipe, augment, self.seed)
        t3 = time.time()
        state = {f"encoder.{k}": v.detach().contiguous() for k, v in model.encoder.state_dict().items()}
        save_checkpoint(run.dir / ENCODER, "encoder", {
            "method": self.method, "method_params": ck.get("method_params"), "backbone": ck["backbone"],
            "branches": list(model.encoder.branches), "finetune_branch": recipe.branch,
            "config": {"lpaft": self.config(), "base": ck.get("config")}, "base_method": ck.get("method"),
            "state_dict": state,
        })
        history = {"lp_loss": lp, "aft_loss": aft}
        atomic_write_json(run.dir / "history.json", history)
        return {"clusters": k, "kmeans_iterations": km.iterations, "kmeans_converged": km.converged,
                "kmeans_empty": km.empty, "cluster_sizes": torch.bincount(km.labels, minlength=k).tolist(),
                "n_images": len(images), "seconds_kmeans": round(t_kmeans, 2), "seconds_lp": round(t2 - t1, 2),
                "seconds_aft": round(t3 - t2, 2), "final_loss": aft[-1], **history}

    def describe(self) -> str:
        return f"{self.base.describe()} -> lpaft {self.method}"

