"""``acbench perf --epochs N``: wall time of whole pretraining epochs, the real loop end to end.

Where :mod:`benchmark.perf` times single steps against a bare loop, this runs
:func:`benchmark.pretrain.run_pretrain` itself (shuffling, every step, the per-epoch host sync
and numerical guard, the resumable checkpoint, the encoder file) for ``epochs`` epochs on random
uint8 images of the preset's dataset shape and size (CIFAR-10: 49,000 images of 32x32; no
download), with random stand-ins for upstream stage outputs (pseudo-labels, a teacher), into a
temporary folder that is deleted afterwards. The recipe is the preset's, schedule included; the
loop is stopped after ``epochs`` epochs. Every epoch's seconds are reported, the first separately
since it includes set-up and warm-up (building the model, cuDNN autotuning, ``torch.compile``),
and ``projected_hours`` multiplies the last epoch's time by the recipe's epoch count: what a full
pretraining would take here (methods whose epochs differ, like RCS's coreset epochs, vary).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from benchmark.config import PRESETS
from benchmark.devices import resolve_device, resolve_precision
from benchmark.errors import ConfigError, check_choice
from benchmark.models import BACKBONES
from benchmark.perf import NATIVE_SIZE, device_name, random_data, stand_in_inputs
from benchmark.pretrain import PretrainConfig, run_pretrain
from methods import get_method, list_methods


class _Enough(Exception):
    """Raised after the epochs to time: ends the pretraining loop early."""


# images pretrained on per epoch (benchmark.data's splits: CIFAR train minus 1,000 validation
# images; STL-10's 100,000 unlabeled images plus its 4,500 training images)
PRETRAIN_IMAGES = {"cifar10": 49_000, "cifar100": 49_000, "stl10": 104_500, "digits": 1_257, "synthetic": 1_000}


def time_epochs(
    method: str,
    preset: str = "paper",
    epochs: int = 2,
    *,
    images: int | None = None,
    backbone: str | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    device: str | torch.device | None = "auto",
    compile: bool = False,
    seed: int = 0,
    bars: bool = False,
) -> dict[str, Any]:
    """Run ``epochs`` epochs of ``method``'s pretraining under ``preset`` on random images and
    return their seconds, images/s and the projected time of the recipe's full pretraining."""
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    p = PRESETS[check_choice("preset", preset, PRESETS)]
    if backbone is not None:
        check_choice("backbone", backbone, BACKBONES)
    dev = resolve_device(device)
    m = get_method(check_choice("method", method, list_methods()), dataset=p.dataset)
    recipe = p.recipe(m.paper_recipe(p.dataset), m.loss_scale)
    if batch_size:
        recipe = recipe.replace(batch_size=batch_size)
    if epochs > recipe.epochs:
        raise ConfigError(f"{method}'s {preset} recipe has {recipe.epochs} epochs; cannot time {epochs}")
    n = images or PRETRAIN_IMAGES[p.dataset]
    if n < 2 * recipe.batch_size:
        raise ConfigError(f"{n} images make fewer than two steps of batch {recipe.batch_size}")
    data = random_data(p.dataset, p.image_size or NATIVE_SIZE[p.dataset], n, seed)
    cfg = PretrainConfig(
        method=method, method_params={}, dataset=p.dataset, image_size=data.image_size,
        backbone=backbone or p.backbone_for(p.dataset), seed=seed, recipe=recipe,
        precision=precision, compile=compile,
    )
    marks = [time.perf_counter()]

    def epoch_done(epoch: int) -> None:  # after the epoch's host sync and checkpoint
        marks.append(time.perf_counter())
        if epoch >= epochs:
            raise _Enough

    with tempfile.TemporaryDirectory(prefix="acbench-perf-epoch-") as tmp:
        try:  # the recipe's own schedule (warm-up, milestones), stopped after `epochs` epochs
            run_pretrain(cfg, data, Path(tmp), dev, stand_in_inputs(m, n, seed), progress=bars,
                         on_epoch_end=epoch_done)
        except _Enough:
            pass
    seconds = [round(b - a, 3) for a, b in zip(marks, marks[1:])]
    batch = min(recipe.batch_size, n)
    steps = n // batch
    steady = seconds[-1]
    return {
        "method": method, "preset": preset, "dataset": p.dataset, "backbone": cfg.backbone,
        "device": device_name(dev), "precision": resolve_precision(precision, dev), "compile": compile,
        "images": n, "batch_size": batch, "steps_per_epoch": steps,
        "epoch_seconds": seconds, "first_epoch_s": seconds[0], "epoch_s": steady,
        "images_per_s": steps * batch / steady, "recipe_epochs": recipe.epochs,
        "projected_hours": steady * recipe.epochs / 3600,
    }


def render_epochs(reports: list[dict[str, Any]]) -> str:
    """Markdown: how the epochs were run, then one row per method and precision."""
    if not reports:
        return "acbench perf --epochs: no reports"
    r = reports[0]
    title = (
        f"acbench perf --epochs: {r['device']}, preset {r['preset']} ({r['dataset']}-shaped random images, "
        f"{r['images']} per epoch), backbone {r['backbone']}, batch {r['batch_size']}; the real pretraining "
        "loop (checkpoint included); epoch s = the last epoch's seconds, projected = that x the recipe's epochs"
    )
    rows = [
        [x["method"], x["precision"] + (" + compile" if x["compile"] else ""), x["steps_per_epoch"],
         f"{x['first_epoch_s']:.1f}", f"{x['epoch_s']:.1f}", f"{x['images_per_s']:.0f}", x["recipe_epochs"],
         f"{x['projected_hours']:.2f}"]
        for x in reports
    ]
    headers = ["method", "precision", "steps/epoch", "first epoch s", "epoch s", "img/s", "recipe epochs",
               "projected h"]
    return f"{title}\n\n{tabulate(rows, headers=headers, tablefmt='github')}"
