import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attacks import (
    AttackInputError,
    attack_label,
    attack_names,
    attack_settings,
    check_attack_spec,
    contrastive_pgd,
    eval_options,
    get_attack,
)
from benchmark.config import EvalConfig
from benchmark.errors import ConfigError, UnknownName
from tests.helpers import accuracy, trained_classifier

EPS = 8 / 255


@pytest.fixture(scope="module")
def undefended():
    """A small ResNet trained normally on 32x32 digits: accurate, not robust."""
    return trained_classifier(32, 8, 200, fc_std=0.01)


acc = accuracy


def test_pgd_breaks_undefended_model(undefended):
    model, x, y = undefended
    clean = acc(model, x, y)
    x_adv = get_attack("pgd20")(model, x, y)
    robust = acc(model, x_adv, y)
    assert clean > 80
    assert robust < 0.5 * clean  # loses most of its accuracy
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_deterministic_and_restores_mode(undefended):
    model, x, y = undefended
    model.train()
    a = get_attack("pgd20")(model, x[:32], y[:32])
    assert model.training  # mode restored
    model.eval()
    b = get_attack("pgd20")(model, x[:32], y[:32])
    assert torch.equal(a, b)


def test_pgd_agrees_with_torchattacks(undefended):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = undefended
    ours = acc(model, get_attack("pgd20")(model, x, y), y)
    ta = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=20, random_start=True)
    theirs = acc(model, ta(x, y), y)
    assert abs(ours - theirs) <= 1.5


def test_autoattack_lite_at_most_pgd(undefended):
    model, x, y = undefended
    aa = get_attack("aa-lite")
    x_aa = aa(model, x[:64], y[:64])
    assert acc(model, x_aa, y[:64]) <= acc(model, get_attack("pgd20")(model, x[:64], y[:64]), y[:64]) + 1e-9
    assert (x_aa - x[:64]).abs().max() <= EPS + 1e-5
    assert all(p.requires_grad for p in model.parameters())  # frozen only during the attack


def test_bad_attack_inputs(undefended):
    model, x, y = undefended
    with pytest.raises(UnknownName, match="did you mean 'pgd20'"):
        get_attack("pgd2O")
    with pytest.raises(ConfigError, match="eps must be in"):
        get_attack("pgd20", eps=1.5)
    with pytest.raises(UnknownName, match="unknown pgd20 option 'foo'; choose from eps, alpha"):
        get_attack("pgd20", foo=1)
    with pytest.raises(UnknownName, match="unknown autoattack option 'version'"):
        get_attack("autoattack", version="lite")  # the name says the version
    with pytest.raises(ConfigError, match="takes no options"):
        get_attack("clean", eps=0.1)
    with pytest.raises(ConfigError, match="takes no options in a spec"):
        check_attack_spec("pgd20:steps=50")  # pgd20 is the protocol's attack; ta:PGD:steps=50 is not
    with pytest.raises(AttackInputError, match=r"\[0, 1\]"):
        get_attack("pgd20")(model, x * 255, y)
    with pytest.raises(AttackInputError, match="float"):
        get_attack("clean")(model, (x * 255).to(torch.uint8), y)


def test_contrastive_pgd_increases_loss_without_weight_grads():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16))
    x = torch.rand(8, 3, 8, 8)
    target = F.normalize(net(torch.rand(8, 3, 8, 8)), dim=1).detach()

    def loss_fn(a):
        z = F.normalize(net(a[0]), dim=1)
        return -(z * target).sum()

    before = loss_fn([x]).item()
    (adv,) = contrastive_pgd(loss_fn, [x], EPS, 2 / 255, 5)
    assert loss_fn([adv]).item() > before
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert all(p.grad is None for p in net.parameters())


def test_registered_attacks_and_labels():
    assert attack_names()[:4] == ["clean", "pgd20", "autoattack", "aa-lite"]
    labels = {n: attack_label(n) for n in ("clean", "pgd20", "autoattack", "aa-lite")}
    assert labels == {"clean": "clean", "pgd20": "PGD-20", "autoattack": "AutoAttack", "aa-lite": "AA-lite"}
    assert attack_label("no-such-attack") == "no-such-attack"
    assert check_attack_spec(" PGD20 ") == "pgd20"


def test_eval_options_come_from_the_registry():
    """What evaluation passes to each attack (formerly hard-coded in benchmark.evaluate)."""
    cfg = EvalConfig(batch_size=123, seed=7, eps=4 / 255)
    assert eval_options("clean", cfg) == {}
    assert eval_options("pgd20", cfg) == {"eps": 4 / 255, "seed": 7}
    for aa in ("autoattack", "aa-lite"):
        assert eval_options(aa, cfg) == {"eps": 4 / 255, "seed": 7, "batch_size": 123}
    pgd = get_attack("pgd20", **eval_options("pgd20", cfg))
    assert (pgd.eps, pgd.alpha, pgd.steps, pgd.random_start, pgd.seed) == (4 / 255, 2 / 255, 20, True, 7)
    assert getattr(get_attack("autoattack"), "whole_set", False)
    assert not getattr(pgd, "whole_set", False)


def test_builtin_settings_are_complete():
    pgd = attack_settings("pgd20", eps=4 / 255, seed=3)
    assert pgd == {"spec": "pgd20", "label": "PGD-20", "threat_model": "Linf", "eps": 4 / 255,
                   "alpha": 2 / 255, "steps": 20, "random_start": True, "seed": 3, "norm": "Linf",
                   "loss": "cross-entropy", "model_mode": "eval"}
    aa = attack_settings("autoattack", batch_size=100)
    assert aa["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"] and aa["version"] == "standard"
    assert (aa["eps"], aa["seed"], aa["batch_size"], aa["threat_model"]) == (8 / 255, 0, 100, "Linf")
    assert attack_settings("aa-lite")["attacks"] == ["apgd-ce", "apgd-t"]
    assert attack_settings("clean") == {"spec": "clean", "label": "clean", "threat_model": None}
