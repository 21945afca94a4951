import pytest
import torch
from torch import nn
from torch.nn import functional as F

from attacks import AttackInputError, UnknownAttack, contrastive_pgd, get_attack
from benchmark.data import load_dataset
from benchmark.models import BackboneConfig, Classifier

EPS = 8 / 255


@pytest.fixture(scope="module")
def undefended():
    """A small ResNet trained normally on 32x32 digits: accurate, not robust."""
    torch.manual_seed(0)
    data = load_dataset("digits", image_size=32)
    model = Classifier(BackboneConfig("resnet10-tiny", 3, data.mean, data.std), 10)
    nn.init.normal_(model.fc.weight, std=0.01)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data.train_x.float() / 255, data.train_y
    for _ in range(8):
        for i in range(0, len(x), 64):
            loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, data.test_x[:200].float() / 255, data.test_y[:200]


def acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100


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


def test_bad_attack_inputs(undefended):
    model, x, y = undefended
    with pytest.raises(UnknownAttack, match="did you mean 'pgd20'"):
        get_attack("pgd2O")
    with pytest.raises(ValueError, match="eps must be in"):
        get_attack("pgd20", eps=1.5)
    with pytest.raises(ValueError, match="bad option"):
        get_attack("pgd20", foo=1)
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
