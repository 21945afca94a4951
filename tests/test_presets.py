"""The presets: one attack radius per preset (evaluation, finetuning and pretraining attacks), the
augmentation adaptation in the pretraining key and in every record, and the quick preset's shape."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmark.augment import ViewAdaptation
from benchmark.config import PRESETS, EvalConfig, Preset, get_preset
from benchmark.errors import ConfigError
from benchmark.models import BackboneConfig
from benchmark.schemes import EPS
from benchmark.stage import RunOptions
from benchmark.stages import PretrainStage
from methods import get_method, list_methods, method_class
from methods.base import AdversarialParams

ADVERSARIAL = [n for n in list_methods() if issubclass(method_class(n).Params, AdversarialParams)]


def test_every_builtin_method_but_simclr_attacks():
    assert "simclr" not in ADVERSARIAL and {"acl", "rocl", "advcl", "rocl-ip", "advcl-iphn"} <= set(ADVERSARIAL)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_valid(name):
    p = get_preset(name)
    BackboneConfig(p.backbone_for(p.dataset))  # a registered backbone
    for scheme in ("slf", "alf", "aff"):
        cfg = p.finetune_config(scheme, p.dataset)
        assert cfg.scheme == scheme and cfg.epochs >= 1
        assert cfg.eps == (p.eps if p.eps is not None else EPS)
    if p.eps is not None:
        assert p.eval.eps == p.eps


def test_quick_has_one_eps_everywhere_and_the_whole_test_split():
    p = get_preset("quick")
    assert p.eps is not None and p.eval.eps == p.eps != EPS
    assert p.eval.n_test is None  # all 360 test digits
    assert p.image_size == 8  # the digits' native resolution
    for scheme in ("slf", "alf", "aff"):
        assert p.finetune_config(scheme, p.dataset).eps == p.eps
    for name in list_methods():
        params = p.method_params(name, p.dataset)
        m = get_method(name, dataset=p.dataset, **params)
        if name not in ADVERSARIAL:
            assert params == {}
            continue
        published = get_method(name, dataset=p.dataset).params
        assert m.params.eps == p.eps  # the pretraining attack's radius is the preset's
        assert math.isclose(m.params.attack_step / m.params.eps, published.attack_step / published.eps, rel_tol=1e-4)
        # through the pretraining stage, into the pretraining key
        cfg = PretrainStage(RunOptions(progress=False), name, {}, p, p.dataset, 0).pretrain_config()
        assert cfg.method_params["eps"] == p.eps and cfg.to_dict()["method_params"]["eps"] == p.eps
    # a run's own parameters win over the preset's
    assert p.method_params("acl", p.dataset, {"eps": 0.1})["eps"] == 0.1


def test_quick_adapts_the_augmentations_for_every_method_and_records_it():
    p = get_preset("quick")
    assert p.augmentation != ViewAdaptation() and not p.augmentation.flip
    assert p.augmentation.min_crop_scale > 0.08
    devs = p.deviations()
    assert any("crop" in d for d in devs) and any("flip" in d for d in devs) and any("eps" in d for d in devs)
    for scheme in ("slf", "alf", "aff"):  # no flips in finetuning either, and it is in the finetune key
        ft = p.finetune_config(scheme, p.dataset)
        assert not ft.flip and ft.to_dict()["flip"] is False and ft.crop_padding == 0
    assert dataclasses.replace(p.finetune_config("slf", p.dataset), flip=False).to_dict()["flip"] is False
    for name in list_methods():
        cfg = PretrainStage(RunOptions(progress=False), name, {}, p, p.dataset, 0).pretrain_config()
        assert cfg.augmentation == p.augmentation
        assert cfg.to_dict()["augmentation"] == dataclasses.asdict(p.augmentation)


def test_published_augmentations_leave_pretraining_keys_unchanged():
    for name in ("smoke", "paper"):
        p = get_preset(name)
        assert p.augmentation == ViewAdaptation() and p.eps is None and p.deviations() == []
        cfg = PretrainStage(RunOptions(progress=False), "acl", {}, p, p.dataset, 0).pretrain_config()
        assert "augmentation" not in cfg.to_dict()
        ft = p.finetune_config("alf", p.dataset)
        assert ft.flip and "flip" not in ft.to_dict()  # finetuning keys unchanged
        assert cfg.method_params["eps"] == get_method("acl").params.eps  # the published radius
        assert p.method_params("acl", p.dataset, {"temperature": 0.2}) == {"temperature": 0.2}


def test_inconsistent_eps_is_refused():
    quick = get_preset("quick")
    with pytest.raises(ConfigError, match="eval.eps"):
        dataclasses.replace(quick, eval=EvalConfig(eps=EPS))
    with pytest.raises(ConfigError, match="finetunes at eps"):
        dataclasses.replace(quick, finetune={"alf": {"eps": EPS}})
    with pytest.raises(ConfigError, match="eps must be in"):
        Preset(name="x", dataset="digits", image_size=8, backbone="resnet10-tiny", pretrain_epochs=1,
               pretrain_batch_size=8, eps=1.5, eval=EvalConfig(eps=1.5))


# ---- the loss-scale rule of the CPU presets' SGD ------------------------------------------------


def test_air_losses_train_at_acl_step_size_under_the_cpu_presets():
    from methods import get_method

    acl, air = get_method("acl"), get_method("acl-air")
    assert (acl.loss_scale, air.loss_scale, get_method("dynacl-air").loss_scale) == (1.0, 2.0, 2.0)
    assert get_method("acl-air++").loss_scale == 2.0 and get_method("dynacl-rcs").loss_scale == 1.0
    quick, paper = PRESETS["quick"], PRESETS["paper"]
    a, b = quick.recipe(acl.paper_recipe("digits"), acl.loss_scale), quick.recipe(air.paper_recipe("digits"), 2.0)
    assert (b.lr, b.weight_decay) == (a.lr / 2, a.weight_decay * 2) and b.optimizer == "sgd"
    assert paper.recipe(air.paper_recipe("cifar10"), 2.0) == air.paper_recipe("cifar10")  # LARS: unchanged
    assert quick.loss_scale_notes(air.paper_recipe("digits"), 2.0) and not quick.loss_scale_notes(
        acl.paper_recipe("digits"), 1.0)
    assert not paper.loss_scale_notes(air.paper_recipe("cifar10"), 2.0)


def test_sgd_at_lr_over_s_and_decay_times_s_is_sgd_on_the_loss_over_s():
    """The rule's claim: the same trajectory, momentum included (fp64, a few steps)."""
    def run(lr, wd, scale):
        torch.manual_seed(0)
        w = torch.randn(5, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr, momentum=0.9, weight_decay=wd)
        for i in range(6):
            x = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
            opt.zero_grad()
            (scale * ((w * x).sum() - 1.0) ** 2).backward()
            opt.step()
        return w.detach()

    s = 2.0
    assert torch.allclose(run(0.5 / s, 5e-4 * s, s), run(0.5, 5e-4, 1.0), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(run(0.5, 5e-4, s), run(0.5, 5e-4, 1.0))  # the scale does matter to SGD
