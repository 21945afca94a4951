"""The method contract (abstract base, self-validating parameters, class-level requirements), the
registry, one training step of every registered method, and a plugin method."""

import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import CPU, fake_extras, one_step, pretrain_config, random_data, training

import methods
import methods.rocl
from benchmark.augment import CropFlip, SimCLRViews, ViewAdaptation
from benchmark.errors import AcbenchError, ConfigError, UnknownName
from benchmark.models import BackboneConfig
from benchmark.optim import LARS, build_optimizer
from benchmark.pretrain import build_training
from methods import UnknownMethod, get_method, list_methods, method_class, register_method
from methods.acl import ACL
from methods.base import AdversarialParams, ContrastiveParams, Method, Recipe
from methods.losses import a_info_nce, info_nce

EXPECTED = {"simclr", "acl", "rocl", "rocl-ip", "rocl-hn", "rocl-iphn", "advcl", "advcl-ip", "advcl-hn", "advcl-iphn"}
PLUGIN = Path(__file__).parent / "plugins" / "my_method.py"


def test_registry_lists_the_methods():
    assert EXPECTED <= set(list_methods())
    assert list_methods() == sorted(list_methods())
    assert all(method_class(name).name == name for name in list_methods())


@pytest.mark.parametrize("name", list_methods())
def test_one_training_step(name):
    s = one_step(name)
    m, model = s.method, s.model
    assert torch.isfinite(s.loss) and s.loss.item() != 0  # DeACL's loss (negative cosines) is below 0
    assert "loss" in s.logs and all(isinstance(v, (torch.Tensor, float)) for v in s.logs.values())
    enc_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in enc_grads[:3]) and any(g.abs().sum() > 0 for g in enc_grads if g is not None)
    # every BN branch the method trains got batch statistics
    changed = {b for b in m.branches
               if any(not torch.equal(v, s.before[k]) for k, v in model.state_dict().items()
                      if f".bn.{b}.running_mean" in k)}
    expected = set(m.branches) if len(m.branches) > 1 else set()
    if len(m.branches) == 1:  # plain single branch: stats of "normal" move
        expected = {m.branches[0]}
    assert changed == expected
    d = m.describe()
    assert d["paper_recipe"]["epochs"] >= 1 and d["paper"] and d["summary"]


# ---- the contract -------------------------------------------------------------------------------


class _Half(Method):
    """A method without its training_step."""

    def paper_recipe(self, dataset=None):
        return Recipe(epochs=1, batch_size=2, optimizer="sgd", lr=0.1)

    def build_head(self, feature_dim):
        return torch.nn.Identity()


def test_method_is_abstract_and_an_incomplete_method_cannot_register():
    with pytest.raises(TypeError):
        Method()
    with pytest.raises(TypeError, match="abstract"):
        _Half()
    with pytest.raises(TypeError, match="_Half does not implement training_step"):
        register_method("half")(_Half)
    assert "half" not in list_methods()
    with pytest.raises(TypeError, match="must subclass methods.base.Method"):
        register_method("not-a-method")(dict)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_requires_is_a_class_constant(name):
    m = get_method(name)
    assert "requires" not in vars(m) and m.requires == type(m).requires
    assert m.requires == (("pseudo_labels",) if name.startswith("advcl") else ())


def test_advcl_requires_its_stage_even_with_a_label_file(tmp_path):
    m = get_method("advcl", pseudo_labels_file=str(tmp_path / "labels.npz"))  # read by the stage
    assert m.requires == ("pseudo_labels",) and "requires" not in vars(m)


def test_params_validate_themselves():
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        ContrastiveParams(temperature=0.0)
    with pytest.raises(ConfigError, match=r"eps must be in \(0, 1\), got 1.5"):
        AdversarialParams(eps=1.5)
    with pytest.raises(ConfigError, match=r"attack_step must be in \(0, 1\)"):
        ACL.Params(attack_step=0.0)
    with pytest.raises(ConfigError, match="attack_steps must be >= 1, got 0"):
        method_class("rocl-ip").Params(attack_steps=0)
    with pytest.raises(ConfigError, match=r"ip \(lambda\) must be in \[0, 1\]"):
        method_class("advcl-iphn").Params(ip=2.0)
    p = method_class("rocl").Params()
    assert (p.temperature, p.eps, p.attack_step, p.attack_steps) == (0.5, 0.0314, 0.007, 7)
    assert isinstance(p, AdversarialParams) and isinstance(method_class("simclr").Params(), ContrastiveParams)


def test_get_method_overrides_and_errors():
    m = get_method("rocl-ip", ip=0.3)
    assert m.params.ip == 0.3 and m.params.adv_weight == 0.5
    with pytest.raises(UnknownMethod, match="did you mean 'rocl-ip'"):
        get_method("rocl_ip")
    with pytest.raises(KeyError):  # UnknownMethod is the registries' UnknownName, a KeyError
        get_method("rocl_ip")
    assert UnknownMethod is UnknownName
    with pytest.raises(ConfigError, match="has no parameter 'lambda'"):
        get_method("rocl-ip", **{"lambda": 0.3})
    with pytest.raises(ConfigError, match="has no parameter 'temprature' \\(did you mean 'temperature'\\?\\)"):
        get_method("acl", temprature=0.3)
    with pytest.raises(ValueError, match="eps must be in"):  # ConfigError is a ValueError
        get_method("acl", eps=1.5)
    with pytest.raises(ValueError, match="ip"):
        get_method("rocl-ip", ip=1.5)
    with pytest.raises(ConfigError, match="parameter 'attack_steps' must be int"):
        get_method("acl", attack_steps="5")


def test_dataset_specific_defaults():
    assert get_method("rocl-hn", dataset="cifar10").params.hn_tau_plus == 0.12
    assert get_method("rocl-hn", dataset="cifar100").params.hn_tau_plus == 0.1


def test_register_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):

        @register_method("acl")
        class Other(ACL):
            pass

    assert method_class("acl") is ACL and ACL.name == "acl"


@pytest.mark.parametrize("name", ["rocl", "rocl-ip", "rocl-hn", "rocl-iphn"])
def test_rocl_recipe_is_torchlars_over_sgd(name):
    """The release's torchlars applies the learning rate outside the momentum buffer."""
    r = get_method(name).paper_recipe("cifar10")
    assert r.optimizer == "lars" and dict(r.optimizer_options) == {"eta": 1e-3, "eps": 1e-8, "lr_in_momentum": False}
    opt = build_optimizer([torch.nn.Parameter(torch.ones(2))], r.optimizer, lr=r.lr, momentum=r.momentum,
                          weight_decay=r.weight_decay, **dict(r.optimizer_options))
    assert isinstance(opt, LARS) and opt.param_groups[0]["lr_in_momentum"] is False


def test_recipe_errors_are_config_errors():
    with pytest.raises(ConfigError, match="unknown optimizer 'lasr' \\(did you mean 'lars'\\?\\)"):
        Recipe(epochs=1, batch_size=2, optimizer="lasr", lr=0.1)
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        Recipe(epochs=1, batch_size=1, optimizer="sgd", lr=0.1)


# ---- method details -----------------------------------------------------------------------------


def _value_and_grad(fn, z0):
    z = z0.clone().requires_grad_(True)
    v = fn(z)
    return v.detach(), torch.autograd.grad(v, z)[0]


def test_rocl_loss_equals_info_nce_forms():
    """RoCL's contrast = 2 x info_nce on [t1, t2, adv]; rocl-ip's = 2 x a_info_nce(adv=(2,), ip, w);
    both with the detached contrast side (value and gradient)."""
    z = torch.nn.functional.normalize(torch.randn(3, 8, 16, dtype=torch.float64), dim=-1)

    def same(f, g):
        (v1, g1), (v2, g2) = _value_and_grad(f, z), _value_and_grad(g, z)
        return torch.allclose(v1, v2, atol=1e-12) and torch.allclose(g1, g2, atol=1e-12)

    assert same(get_method("rocl").contrast, lambda x: 2 * info_nce(x, 0.5, detach_contrast=True))
    ip = get_method("rocl-ip")
    assert same(ip.contrast, lambda x: 2 * a_info_nce(x, adv=(2,), ip=0.2, adv_weight=0.5, detach_contrast=True))
    assert not same(ip.contrast, lambda x: 2 * a_info_nce(x, adv=(2,), ip=0.2, adv_weight=0.5))
    plain = get_method("rocl-ip", ip=None, adv_weight=1.0)
    assert same(plain.contrast, get_method("rocl").contrast)


class _Calls:
    """Records the arguments of a method's function (wrapped on its class) in call order."""

    def __init__(self, monkeypatch, cls, name, log):
        original = getattr(cls, name)

        def spy(method, z, *args):
            log.append((name, z.detach().clone()))
            return original(method, z, *args)

        monkeypatch.setattr(cls, name, spy)


@pytest.mark.parametrize("reg_forward", ["separate", "shared"])
def test_rocl_regulariser_forward(monkeypatch, reg_forward):
    """"separate" (released): the attack (K calls of pair_loss, eval mode), then the regulariser
    on its own train-mode forward of [adv, t2], then the 3-view forward; "shared": the
    regulariser reads the 3-view embeddings. The normal BN's statistics count the forwards."""
    log = []
    _Calls(monkeypatch, methods.rocl.RoCL, "pair_loss", log)
    _Calls(monkeypatch, methods.rocl.RoCL, "contrast", log)
    s = one_step("rocl", attack_steps=3, reg_forward=reg_forward)
    order = [name for name, _ in log]
    key = "encoder.bn1.bn.normal.num_batches_tracked"
    tracked = int(s.model.state_dict()[key] - s.before[key])
    (z3,) = [z for name, z in log if name == "contrast"]
    reg_z = log[3][1] if reg_forward == "separate" else log[4][1]
    if reg_forward == "separate":
        assert order == ["pair_loss"] * 4 + ["contrast"] and tracked == 2
        assert not torch.allclose(reg_z, torch.stack([z3[2], z3[1]]), atol=1e-4)  # other BN batch
    else:
        assert order == ["pair_loss"] * 3 + ["contrast", "pair_loss"] and tracked == 1
        assert torch.equal(reg_z, torch.stack([z3[2], z3[1]]))
    assert torch.allclose(s.logs["reg"], s.method.pair_loss(reg_z))
    assert torch.allclose(s.loss.detach(), s.logs["contrast"] + s.logs["reg"] / 256)


@pytest.mark.parametrize("name", ["advcl", "advcl-ip", "advcl-iphn"])
def test_advcl_attack_runs_the_methods_attack_contrast(monkeypatch, name):
    """The attack objective's contrastive part is the method's own attack_contrast, once per
    step, on [x_cl, t1, t2, HFC]."""
    log = []
    _Calls(monkeypatch, method_class(name), "attack_contrast", log)
    one_step(name, attack_steps=2)
    assert len(log) == 2 and all(z.shape == (4, 8, 128) for _, z in log)


# ---- initialisation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,init",
    [("acl", "kaiming-fan-out"), ("advcl", "kaiming-fan-out"), ("advcl-iphn", "kaiming-fan-out"),
     ("rocl", "default"), ("rocl-hn", "default"), ("simclr", "default"), ("acl:default", "default")],
)
def test_backbone_init_is_the_release(name, init):
    """ACL and AdvCL: every conv ~ N(0, 2 / fan_out) (kaiming_normal_, fan-out, ReLU), BN 1 / 0,
    heads untouched; RoCL and SimCLR: PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (std
    1/sqrt(3 fan_in)). Sample std within 5 standard errors (relative SE <= 1/sqrt(2n))."""
    name, _, override = name.partition(":")
    m = get_method(name, **({"init": override} if override else {}))
    assert m.params.init == init and m.describe()["params"]["init"] == init
    torch.manual_seed(0)
    model = m.build_model(BackboneConfig("resnet18-small"))
    convs = [c for c in model.encoder.modules() if isinstance(c, torch.nn.Conv2d)]
    assert len(convs) == 20
    for conv in convs:
        w = conv.weight.detach().double()
        n, fan_in, fan_out = w.numel(), w[0].numel(), w.shape[0] * w[0, 0].numel()
        if init == "kaiming-fan-out":
            sigma = math.sqrt(2 / fan_out)
        else:
            sigma = 1 / math.sqrt(3 * fan_in)
            assert w.abs().max() <= 1 / math.sqrt(fan_in)
        assert abs(w.std().item() / sigma - 1) < 5 / math.sqrt(2 * n), (conv, w.std().item(), sigma)
        assert abs(w.mean().item()) < 5 * sigma / math.sqrt(n)
    bns = [b for b in model.encoder.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert bns and all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    for lin in model.head.modules():  # heads keep PyTorch's Linear initialisation
        if isinstance(lin, torch.nn.Linear):
            assert lin.weight.abs().max() <= 1 / math.sqrt(lin.in_features)


def test_init_is_checked():
    with pytest.raises(UnknownName, match="unknown init 'kaiming' \\(did you mean 'kaiming-fan-out'\\?\\)"):
        get_method("acl", init="kaiming")
    with pytest.raises(UnknownName, match="unknown init"):
        ContrastiveParams(init="xavier")


def test_acl_attack_uses_pgd_branch_and_no_weight_grads():
    m = get_method("acl")
    model = m.build_model(BackboneConfig("resnet10-tiny", 3))
    m.setup(16, torch.device("cpu"), {})
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.cat([m.views(x), m.views(x)])
    adv = m.adversarial_views(model, t, 8)
    assert all(p.grad is None for p in model.parameters())
    assert (adv - t).abs().max() <= 8 / 255 + 1e-6 and model.training


# ---- plugins ------------------------------------------------------------------------------------


@dataclass
class _GatherSpy:
    shapes: list

    def wrap(self, gather):
        def spy(method, z):
            self.shapes.append(tuple(z.shape))
            return gather(method, z)

        return spy


def test_plugin_method_trains_one_step(monkeypatch):
    """tests/plugins/my_method.py (the README's 'Add a method' example) registers a complete
    method that trains, and hands the loss gathered embeddings (global negatives under torchrun)."""
    monkeypatch.syspath_prepend(str(PLUGIN.parents[2]))  # the repository root, as for `python -m`
    assert "adv-simclr" not in list_methods()
    methods.load_plugin("tests.plugins.my_method")
    try:
        assert "adv-simclr" in list_methods()
        cls = method_class("adv-simclr")
        spy = _GatherSpy([])
        monkeypatch.setattr(cls, "gather", spy.wrap(cls.gather))
        s = one_step("adv-simclr", attack_steps=2)
        assert torch.isfinite(s.loss) and s.loss.item() > 0
        assert all(p.grad is not None for p in s.model.encoder.parameters())
        # 2 attack steps + the loss, each on [2 views, batch 8, 128]
        assert spy.shapes == [(2, 8, 128)] * 3
        with pytest.raises(ConfigError, match="eps must be in"):
            get_method("adv-simclr", eps=2.0)
    finally:
        methods.METHODS.unregister("adv-simclr")
        sys.modules.pop("tests.plugins.my_method", None)


def test_readme_add_a_method_example_is_the_plugin():
    """The README shows tests/plugins/my_method.py verbatim, so its example is tested code."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Add a method", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert any(PLUGIN.read_text() in block for block in blocks)  # a path comment may precede it


def test_plugin_import_error_is_clear():
    with pytest.raises(AcbenchError, match="cannot import plugin module 'no_such_pkg.mod'"):
        methods.load_plugin("no_such_pkg.mod")


# ---- the preset's augmentation adaptation -------------------------------------------------------

ADAPTED = ViewAdaptation(min_crop_scale=0.5, flip=False)


def _views_of(method: Method) -> list[torch.nn.Module]:
    return [v for v in vars(method).values() if isinstance(v, (SimCLRViews, CropFlip))]


@pytest.mark.parametrize("name", list_methods())
def test_view_adaptation_reaches_every_methods_views_alike(name):
    """The pretraining loop hands the preset's adaptation to the method before setup; every view
    module of every method gets the same change (crop at least 0.5 of the area, no flips) and
    keeps the rest of its published settings."""
    published = training(name).method
    cfg = dataclasses.replace(pretrain_config(name), augmentation=ADAPTED)
    adapted = build_training(cfg, random_data(16), CPU, fake_extras(method_class(name), 16)).method
    assert published.augmentation == ViewAdaptation() and adapted.augmentation == ADAPTED
    before, after = _views_of(published), _views_of(adapted)
    assert after and len(before) == len(after)  # DeACL has crop-and-flip views only
    for p, a in zip(before, after):
        assert type(p) is type(a) and p.flip and not a.flip
        if isinstance(a, SimCLRViews):
            assert p.scale[0] < 0.5 and a.scale == (0.5, p.scale[1])
            kept = ("size", "ratio", "jitter", "p_jitter", "p_gray", "colour_first", "interpolation", "strength")
            assert all(getattr(p, k) == getattr(a, k) for k in kept)
        else:
            assert (p.size, p.padding) == (a.size, a.padding)
