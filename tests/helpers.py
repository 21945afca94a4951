"""Test set-up shared by the method tests: a method's training built as the pretraining loop
builds it (:func:`benchmark.pretrain.build_training`), on random images, with stand-ins for the
outputs of its upstream stages.

    tr = training("acl")                      # method, model, optimiser, schedule; seeded
    step = one_step("advcl-ip", epoch=31)     # one training_step + backward, nothing updated
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from benchmark.config import get_preset
from benchmark.data import Dataset, load_dataset
from benchmark.models import BackboneConfig, Classifier, ContrastiveModel
from benchmark.perf import stand_in_inputs
from benchmark.pretrain import PretrainConfig, Training, build_training
from methods import get_method, method_class
from methods.base import Batch, Logs, Method

CPU = torch.device("cpu")


def random_data(n: int, image_size: int = 16, seed: int = 0, name: str = "digits") -> Dataset:
    """``n`` random uint8 RGB images (no download); every split is a view of them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, image_size, image_size), generator=g, dtype=torch.uint8)
    y = torch.zeros(n, dtype=torch.int64)
    return Dataset(name, x, y, x[:1], y[:1], x[:1], y[:1], pretrain_x=x, num_classes=10,
                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


fake_extras = stand_in_inputs  # random pseudo-labels for methods that need them


def pretrain_config(
    name: str, batch_size: int = 8, compile: bool = False, preset: str = "smoke", seed: int = 0,
    **params: Any,
) -> PretrainConfig:
    """The smoke preset's config for method ``name`` (``params`` override its defaults), fp32."""
    p = get_preset(preset)
    m = get_method(name, dataset=p.dataset, **params)
    return PretrainConfig(
        method=name, method_params=dict(params), dataset=p.dataset, image_size=p.image_size,
        backbone=p.backbone, seed=seed, recipe=p.recipe(m.paper_recipe(p.dataset)).replace(batch_size=batch_size),
        precision="fp32", compile=compile,
    )


def training(name: str, n: int = 16, device: torch.device = CPU, **config: Any) -> Training:
    """Method ``name`` set up by the pretraining loop's builder on ``n`` random images
    (``config``: :func:`pretrain_config`'s options and the method's parameters)."""
    cfg = pretrain_config(name, **config)
    data = random_data(n, cfg.image_size or 16, cfg.seed)
    return build_training(cfg, data, device, fake_extras(method_class(name), n, cfg.seed))


@dataclass
class Step:
    method: Method
    model: ContrastiveModel
    loss: torch.Tensor
    logs: Logs
    before: dict[str, torch.Tensor]  # the model's state before the step


def one_step(name: str, batch_size: int = 8, epoch: int = 1, **config: Any) -> Step:
    """One ``training_step`` of method ``name`` (model in train mode) on the first ``batch_size``
    of 16 random images, then ``backward``; no optimiser step."""
    tr = training(name, batch_size=batch_size, **config)
    idx = torch.arange(batch_size, device=tr.images.device)
    batch = Batch(images=tr.images[idx].float().div_(255), indices=idx, epoch=epoch, epochs=tr.epochs,
                  step=0, extras=tr.extras)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.model.train()
    loss, logs = tr.method.training_step(tr.model, batch)
    loss.backward()
    return Step(tr.method, tr.model, loss, logs, before)


def adaptive_lam_reference(d_t: float, d_bar: float, d_min: float, lam0: float) -> float:
    """A-InfoNCE's adaptive lam after the warm-up, written out on numbers (the package computes
    it on tensors only): lam0 above d_bar, 0.5 below d_min, linear in between."""
    if d_t > d_bar:
        return lam0
    if d_t < d_min:
        return 0.5
    if d_bar <= d_min:  # d_t == d_bar == d_min: the interpolation's d_bar end
        return lam0
    return lam0 + (d_bar - d_t) / (d_bar - d_min) * (0.5 - lam0)


def trained_classifier(image_size: int, epochs: int, n_test: int, fc_std: float | None = None):
    """A small ResNet trained normally (Adam) on digits at ``image_size``: accurate, not robust.
    Returns (model in eval mode, the first ``n_test`` test images in [0, 1], their labels)."""
    torch.manual_seed(0)
    data = load_dataset("digits", image_size=image_size)
    model = Classifier(BackboneConfig("resnet10-tiny", 3, data.mean, data.std), 10)
    if fc_std is not None:
        torch.nn.init.normal_(model.fc.weight, std=fc_std)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data.train_x.float() / 255, data.train_y
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, data.test_x[:n_test].float() / 255, data.test_y[:n_test]


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of ``x`` that ``model`` classifies as ``y``."""
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100
