"""Registry behaviour and one training step of every registered method on synthetic data."""

import re
import sys
from pathlib import Path

import pytest
import torch

import methods
from benchmark.data import make_synthetic
from benchmark.models import BackboneConfig
from methods import UnknownMethod, get_method, list_methods, register_method
from methods.acl import ACL
from methods.base import Batch

EXPECTED = {"simclr", "acl", "rocl", "rocl-ip", "rocl-hn", "rocl-iphn", "advcl", "advcl-ip", "advcl-hn", "advcl-iphn"}


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_train=64, n_val=8, n_test=8, image_size=16)


def step(name, data, **overrides):
    torch.manual_seed(0)
    m = get_method(name, **overrides)
    model = m.build_model(BackboneConfig("resnet10-tiny", 3, data.mean, data.std))
    n = 16
    extras = {}
    if "pseudo_labels" in m.requires:
        from methods.advcl import CLUSTERS

        extras["pseudo_labels"] = {k: torch.randint(0, min(k, 4), (len(data.pretrain_x),)) for k in CLUSTERS}
    m.setup(16, torch.device("cpu"), {**extras, "n_images": len(data.pretrain_x)})
    batch = Batch(data.pretrain_x[:n].float() / 255, torch.arange(n), epoch=1, epochs=1, step=0, extras=extras)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    loss, logs = m.training_step(model, batch)
    loss.backward()
    return m, model, loss, logs, before


def test_registry_lists_the_methods():
    assert EXPECTED <= set(list_methods())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_one_training_step(name, data):
    m, model, loss, logs, before = step(name, data)
    assert torch.isfinite(loss) and loss.item() > 0
    assert "loss" in logs
    enc_grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in enc_grads[:3]) and any(g.abs().sum() > 0 for g in enc_grads if g is not None)
    # every BN branch the method trains got batch statistics
    changed = {b for b in m.branches
               if any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()
                      if f".bn.{b}.running_mean" in k)}
    expected = set(m.branches) if len(m.branches) > 1 else set()
    if len(m.branches) == 1:  # plain single branch: stats of "normal" move
        expected = {m.branches[0]}
    assert changed == expected
    d = m.describe()
    assert d["paper_recipe"]["epochs"] >= 1 and d["paper"] and d["summary"]


def test_get_method_overrides_and_errors():
    m = get_method("rocl-ip", ip=0.3)
    assert m.params.ip == 0.3 and m.params.adv_weight == 0.5
    with pytest.raises(UnknownMethod, match="did you mean 'rocl-ip'"):
        get_method("rocl_ip")
    with pytest.raises(ValueError, match="has no parameter 'lambda'"):
        get_method("rocl-ip", **{"lambda": 0.3})
    with pytest.raises(ValueError, match="eps must be in"):
        get_method("acl", eps=1.5)
    with pytest.raises(ValueError, match="ip"):
        get_method("rocl-ip", ip=1.5)


def test_dataset_specific_defaults():
    assert get_method("rocl-hn", dataset="cifar10").params.hn_tau_plus == 0.12
    assert get_method("rocl-hn", dataset="cifar100").params.hn_tau_plus == 0.1


def test_register_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):

        @register_method("acl")
        class Other(ACL):
            pass


def test_rocl_loss_equals_info_nce_forms(data):
    """RoCL's contrast = 2 x info_nce on [t1, t2, adv]; rocl-ip's = 2 x a_info_nce(adv=(2,), ip, w)."""
    from methods.losses import a_info_nce, info_nce

    z = torch.nn.functional.normalize(torch.randn(3, 8, 16), dim=-1)
    assert torch.allclose(get_method("rocl").contrast(z), 2 * info_nce(z, 0.5))
    ip = get_method("rocl-ip")
    assert torch.allclose(ip.contrast(z), 2 * a_info_nce(z, adv=(2,), ip=0.2, adv_weight=0.5))
    plain = get_method("rocl-ip", ip=None, adv_weight=1.0)
    assert torch.allclose(plain.contrast(z), get_method("rocl").contrast(z))


def test_acl_attack_uses_pgd_branch_and_no_weight_grads(data):
    m = get_method("acl")
    model = m.build_model(BackboneConfig("resnet10-tiny", 3, data.mean, data.std))
    m.setup(16, torch.device("cpu"), {})
    x = data.pretrain_x[:8].float() / 255
    t = torch.cat([m.views(x), m.views(x)])
    adv = m.adversarial_views(model, t, 8)
    assert all(p.grad is None for p in model.parameters())
    assert (adv - t).abs().max() <= 8 / 255 + 1e-6 and model.training


def test_readme_plugin_example_runs(tmp_path, data, monkeypatch):
    """The README's 'Add a method' example is real code that registers and trains."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(# my_methods/acl_sym.py.*?)```", readme, re.S).group(1)
    pkg = tmp_path / "my_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "acl_sym.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    methods._REGISTRY.pop("acl-ip", None)
    try:
        methods.load_plugin("my_methods.acl_sym")
        assert "acl-ip" in list_methods()
        m, model, loss, logs, before = step("acl-ip", data)
        assert torch.isfinite(loss)
    finally:
        methods._REGISTRY.pop("acl-ip", None)
        sys.modules.pop("my_methods.acl_sym", None)
        sys.modules.pop("my_methods", None)


def test_plugin_import_error_is_clear():
    with pytest.raises(ImportError, match="cannot import plugin module 'no_such_pkg.mod'"):
        methods.load_plugin("no_such_pkg.mod")
