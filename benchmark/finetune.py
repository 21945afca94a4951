"""The finetuning loop shared by every scheme (``benchmark.schemes``: SLF, ALF, AFF, plugins).

The encoder is the pretrained model's finetuning BN branch (the adversarial one for dual-BN
methods; ``FinetuneConfig.branch`` may name it) turned into a plain single-BN network with strict
key matching; the classifier is a zero-initialised linear layer on the pooled feature. The scheme
builds that model (dual-BN AFF keeps two BN branches while it trains and converts to the finetuned
one at the end) and gives each batch's loss. The loop owns the optimiser (SGD on the head, or on
everything when the scheme trains the encoder), the step schedule, the crop-and-flip augmentation,
model selection and the checkpoint, which always holds the single-BN classifier.

Model selection is the last epoch, or (``selection="val"``) the epoch with the best PGD-20
accuracy on the held-out validation split. The test set is never looked at here.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from attacks import get_attack
from benchmark.augment import CropFlip
from benchmark.checkpoints import CLASSIFIER, load_classifier, load_encoder  # noqa: F401  (re-exported)
from benchmark.data import Dataset
from benchmark.devices import to_layout
from benchmark.io import CheckpointError, save_checkpoint
from benchmark.models import CheckpointMismatch
from benchmark.schemes import FinetuneConfig, get_scheme


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack, batch_size: int) -> float:
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        xa = attack(model, xb, yb)
        with torch.no_grad():
            correct += (model(xa).argmax(1) == yb).sum().item()
    return 100.0 * correct / max(len(x), 1)


def run_finetune(
    encoder_path: Path,
    cfg: FinetuneConfig,
    data: Dataset,
    out_dir: Path,
    device: torch.device,
    seed: int,
    train_limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Finetune under ``cfg.scheme``; writes ``classifier.pt`` in ``out_dir``; returns a summary."""
    t_start = time.time()
    scheme = get_scheme(cfg.scheme)
    torch.manual_seed(seed)
    encoder, ck = load_encoder(encoder_path, device)
    branch = cfg.branch or ck["finetune_branch"]
    try:
        model = scheme.build_model(encoder, branch, data.num_classes, cfg).to(device)
    except CheckpointMismatch as e:
        raise CheckpointError(f"{encoder_path}: {e}") from None
    model = to_layout(model, device)

    if scheme.trains_encoder:
        params = list(model.parameters())
    else:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        params = list(model.fc.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=0.1)

    x_train = data.train_x[:train_limit] if train_limit else data.train_x
    y_train = (data.train_y[:train_limit] if train_limit else data.train_y).to(device)
    x_train = x_train.to(device)
    augment = CropFlip(data.image_size, padding=cfg.crop_padding, flip=cfg.flip).to(device)
    n = x_train.shape[0]
    bs = min(cfg.batch_size, n)
    steps = max(n // bs, 1)
    val_attack = get_attack("pgd20", eps=cfg.eps)
    best = (-1.0, 0, None)
    history = []
    bar = tqdm(
        total=cfg.epochs * steps,
        disable=not progress,
        desc=f"finetune {cfg.scheme}",
        unit="step",
        leave=False,
        dynamic_ncols=True,
    )
    for epoch in range(1, cfg.epochs + 1):
        total = torch.zeros((), device=device)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).to(
            device
        )
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            x = augment(x_train[idx].float().div_(255))
            y = y_train[idx]
            loss = scheme.loss(model, x, y, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            bar.update(1)
        sched.step()
        mean_loss = float(total) / steps
        if mean_loss != mean_loss or mean_loss in (float("inf"), float("-inf")):
            bar.close()
            raise FloatingPointError(
                f"finetuning ({cfg.scheme}) loss became non-finite at epoch {epoch}"
            )
        entry = {"epoch": epoch, "loss": round(mean_loss, 6)}
        if cfg.selection == "val":
            model.eval()
            acc = _accuracy(
                model, data.val_x.to(device).float() / 255, data.val_y.to(device), val_attack, 500
            )
            entry["val_pgd20"] = acc
            if acc > best[0]:
                best = (acc, epoch, copy.deepcopy(model.state_dict()))
        history.append(entry)
        bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4f}")
    bar.close()

    chosen_epoch = cfg.epochs
    if cfg.selection == "val" and best[2] is not None:
        model.load_state_dict(best[2])
        chosen_epoch = best[1]
    model = scheme.to_classifier(model, cfg).eval()
    save_checkpoint(
        out_dir / CLASSIFIER,
        "classifier",
        {
            "backbone": model.encoder.config.to_dict(),
            "num_classes": data.num_classes,
            "state_dict": {k: v.contiguous() for k, v in model.state_dict().items()},
            "config": cfg.to_dict(),
            "encoder_branch": branch,
            "selected_epoch": chosen_epoch,
        },
    )
    return {
        "seconds": time.time() - t_start,
        "selected_epoch": chosen_epoch,
        "history": history,
        "encoder_branch": branch,
    }
