"""ACL-AIR and DynACL-AIR (methods/air.py): the SIR and AIR regularisers and the whole loss against a
re-derivation of the released formulas (GodXuxilie/Enhancing_ACL_via_AIR ``AIR.py``), the attack
objective, the views and forwards of a step (x_o through the "normal" BN), the schedules, one step,
pass counts per step, and a smoke run through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import one_step, training
from test_dynacl import interleave, nt_xent_released

from benchmark.checkpoints import load_encoder
from benchmark.cli import main
from benchmark.errors import AcbenchError
from benchmark.optim import warmup_cosine_lambda
from benchmark.perf import PerfBench
from methods import get_method
from methods.air import invariance_regularisers
from methods.base import Batch

T = 0.5
NAMES = ("acl-air", "dynacl-air")


def raw(v: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(v, n, 8, generator=g, dtype=torch.float64)


def regularisers_ref(zi, zj, zo, zia, zja, form: str = "released"):
    """SIR and AIR re-derived term by term over the batch index m (``AIR.py:78-98``)."""
    n = zi.shape[0]

    def softmax_diag(a, b):
        s = [torch.dot(a[m], b[m]) / T for m in range(n)]
        den = sum(torch.exp(v) for v in s)
        return [torch.exp(v) / den for v in s]

    p_i, p_j = softmax_diag(zi, zo), softmax_diag(zj, zo)
    q_i = [a * b for a, b in zip(softmax_diag(zia, zo), softmax_diag(zia, zi))]
    q_j = [a * b for a, b in zip(softmax_diag(zja, zo), softmax_diag(zja, zj))]
    if form == "released":  # kl_div(input=p_i, target=log p_j, log_target=True): sum exp(t) (t - input)
        sir = sum(p_j[m] * (torch.log(p_j[m]) - p_i[m]) for m in range(n))
        air = sum(q_j[m] * (torch.log(q_j[m]) - q_i[m]) for m in range(n))
    else:
        sir = sum(p_j[m] * (torch.log(p_j[m]) - torch.log(p_i[m])) for m in range(n))
        air = sum(q_j[m] * (torch.log(q_j[m]) - torch.log(q_i[m])) for m in range(n))
    return sir, air


def _value_grad(fn, u0):
    u = u0.clone().requires_grad_(True)
    v = fn(u)
    (g,) = torch.autograd.grad(v, u)
    return v.detach(), g


# ---- regularisers, loss, attack objective ------------------------------------------------------------


@pytest.mark.parametrize("form", ["released", "kl"])
@pytest.mark.parametrize("n", [2, 5, 12])
@pytest.mark.parametrize("which", [0, 1])
def test_regularisers_are_the_released_formulas(form, n, which):
    u0 = raw(5, n, n)

    def ours(u):
        z = F.normalize(u, dim=-1)
        return invariance_regularisers(*z, temperature=T, form=form)[which]

    def ref(u):
        z = F.normalize(u, dim=-1)
        return regularisers_ref(*z, form=form)[which]

    (v1, g1), (v2, g2) = _value_grad(ours, u0), _value_grad(ref, u0)
    assert abs(v1.item() - v2.item()) < 1e-10
    assert g2.abs().max() > 1e-6 and (g1 - g2).abs().max() < 1e-10


def test_released_form_is_not_the_kl_divergence():
    z = F.normalize(raw(5, 6, 3), dim=-1)
    rel, kl = invariance_regularisers(*z, form="released"), invariance_regularisers(*z, form="kl")
    assert kl[0] >= 0  # KL(p_j || p_i) >= 0 (AIR: q is not normalised, so no sign)
    assert abs(rel[0] - kl[0]) > 1e-3 and abs(rel[1] - kl[1]) > 1e-3
    with pytest.raises(AcbenchError):
        invariance_regularisers(*z, form="kl-div")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [2, 7])
@pytest.mark.parametrize("w", [0.0, 0.3])
def test_loss_is_the_released_air_loss(name, n, w):
    m = get_method(name, dataset="cifar10")
    u0 = raw(5, n, 20 + n)  # zi, zj, z_orig, zi_adv, zj_adv

    def ours(u):
        z = F.normalize(u, dim=-1)
        return m.loss(torch.cat([z[0], z[1]]), torch.cat([z[3], z[4]]), z[2], w)[0]

    def ref(u):
        z = F.normalize(u, dim=-1)
        sir, air = regularisers_ref(*z)
        nat, adv = nt_xent_released(interleave(u[0], u[1])), nt_xent_released(interleave(u[3], u[4]))
        return (1 - w) * nat + (1 + w) * adv + 0.5 * sir + 0.5 * air

    (v1, g1), (v2, g2) = _value_grad(ours, u0), _value_grad(ref, u0)
    assert abs(v1.item() - v2.item()) < 1e-10
    assert (g1 - g2).abs().max() < 1e-10
    assert g2[2].abs().max() > 1e-6  # x_o's embedding gets a gradient (through SIR and AIR)


def test_lambdas_weight_the_regularisers():
    z = F.normalize(raw(5, 6, 9), dim=-1)
    args = (torch.cat([z[0], z[1]]), torch.cat([z[3], z[4]]), z[2], 0.2)
    base, terms = get_method("acl-air", lambda1=0.0, lambda2=0.0).loss(*args)
    both, _ = get_method("acl-air", lambda1=0.5, lambda2=2.0).loss(*args)
    assert both.item() == pytest.approx((base + 0.5 * terms["sir"] + 2.0 * terms["air"]).item(), abs=1e-12)
    assert base.item() == pytest.approx((0.8 * terms["clean"] + 1.2 * terms["adv"]).item(), abs=1e-12)


@pytest.mark.parametrize("n", [2, 6])
def test_attack_objective_is_the_released_nt_xent(n):
    m = get_method("dynacl-air", dataset="cifar10")
    u0 = raw(2, n, 30 + n)
    (v1, g1) = _value_grad(lambda u: m.contrast(F.normalize(torch.cat([u[0], u[1]]), dim=-1), n), u0)
    (v2, g2) = _value_grad(lambda u: nt_xent_released(interleave(u[0], u[1])), u0)
    assert abs(v1.item() - v2.item()) < 1e-10 and (g1 - g2).abs().max() < 1e-10
    assert m.params.attack_step == pytest.approx(m.params.eps / 4)


# ---- the step ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_step_forwards_adversarial_clean_and_original_in_the_released_order(name):
    tr = training(name, n=16, batch_size=8)
    model, m = tr.model, tr.method
    calls = []
    hook = model.register_forward_pre_hook(lambda mod, args: calls.append((mod.training, args[1], args[0].detach())))
    idx = torch.arange(8)
    x = tr.images[idx].float() / 255
    model.train()
    try:
        loss, logs = m.training_step(model, Batch(images=x, indices=idx, epoch=1, epochs=1000, step=0))
    finally:
        hook.remove()
    attack = [c for c in calls if not c[0]]
    train = [c for c in calls if c[0]]
    assert len(attack) == m.params.attack_steps and all(b == "pgd" and t.shape[0] == 16 for _, b, t in attack)
    assert [(b, t.shape[0]) for _, b, t in train] == [("pgd", 16), ("normal", 16), ("normal", 8)]
    assert torch.equal(train[2][2], x)  # x_o: the un-augmented images
    assert (train[0][2] - train[1][2]).abs().max() <= m.params.eps + 1e-6
    assert set(logs) == {"loss", "clean", "adv", "sir", "air"}
    w = m.adv_weight(1, 1000)
    expected = (1 - w) * logs["clean"] + (1 + w) * logs["adv"] + 0.5 * logs["sir"] + 0.5 * logs["air"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_one_step_on_synthetic_data(name):
    s = one_step(name)
    assert torch.isfinite(s.loss)
    grads = [p.grad for p in s.model.encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    changed = {b for b in s.method.branches for k, v in s.model.state_dict().items()
               if f".bn.{b}.running_mean" in k and not torch.equal(v, s.before[k])}
    assert changed == {"normal", "pgd"}
    assert s.model.head.linears[1].bias is None and s.model.head.linears[2].bias is None


# ---- schedules ---------------------------------------------------------------------------------------


def test_dynaug_schedule():
    acl, dyn = get_method("acl-air"), get_method("dynacl-air")
    assert all(acl.strength(e, 1000) == 1.0 and acl.adv_weight(e, 1000) == 0.0 for e in (1, 51, 1000))
    assert dyn.strength(50, 1000) == 1.0 and dyn.strength(51, 1000) == pytest.approx(0.95)
    assert dyn.adv_weight(51, 1000) == pytest.approx(2 / 3 * 0.05)
    assert dyn.adv_weight(1000, 1000) == pytest.approx(2 / 3 * 0.95)  # 0.633 at most
    assert dyn.on_epoch_start(1000, 1000) == {"strength": pytest.approx(0.05), "adv_weight": pytest.approx(0.6333, abs=1e-4)}


@pytest.mark.parametrize("name", NAMES)
def test_learning_rate_is_stepped_before_each_update_as_released(name):
    m = get_method(name, dataset="cifar10")
    recipe, spe, E = m.paper_recipe("cifar10"), 4, 1000
    f = m.lr_lambda(recipe, spe, E * spe)
    base = warmup_cosine_lambda(E * spe, 10 * spe, recipe.min_lr_ratio)
    assert all(f(i) == base(i + 1) for i in range(0, E * spe, 7))
    assert f(0) == pytest.approx(1 / (10 * spe))  # the first update does not run at lr 0
    assert get_method(name, lr_schedule="iteration").lr_lambda(recipe, spe, E * spe)(0) == 0.0


@pytest.mark.parametrize("bad", [dict(lambda1=-0.1), dict(lambda2=-1.0), dict(stages=0), dict(reweight=-1.0),
                                 dict(kl_form="js"), dict(lr_schedule="epoch"), dict(interpolation="nearest")])
def test_params_validate_themselves(bad):
    with pytest.raises(AcbenchError):
        get_method("dynacl-air", **bad)


@pytest.mark.parametrize("name", NAMES)
def test_paper_recipe_and_description(name):
    for ds in ("cifar10", "cifar100", "stl10"):
        d = get_method(name, dataset=ds).describe()
        r = d["paper_recipe"]
        assert (r["epochs"], r["batch_size"], r["optimizer"], r["lr"], r["weight_decay"], r["warmup_epochs"]) == (
            1000, 512, "lars", 5.0, 1e-6, 10)
        assert (d["params"]["lambda1"], d["params"]["lambda2"], d["params"]["interpolation"]) == (0.5, 0.5, "bicubic")
        assert d["finetune_branch"] == "pgd"


# ---- cost ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [2, 5])
def test_passes_per_step(name, k):
    """Per image, K attack steps: the attack as ACL's (2K forwards, 2K input backwards), then 2
    adversarial + 2 clean views + x_o forward and backward. WAVE2.md section 7's units (backward 2):
    12K + 15 = 45 at K = 5 (ACL: 42)."""
    bench = PerfBench(name, "smoke", batch_size=4, device="cpu", params={"attack_steps": k})
    _, passes = bench.count(bench.harness_step)
    assert passes == {"forward": 2 * k + 5, "input_backward": 2 * k, "weight_backward": 5}
    assert passes["forward"] + 2 * passes["input_backward"] + 2 * passes["weight_backward"] == 6 * k + 15


# ---- end to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_run_through_the_cli(tmp_path):
    r = CliRunner().invoke(main, ["run", "--method", "dynacl-air", "--preset", "smoke", "--quiet", "--attacks",
                                  "pgd20", "--json", "--results", str(tmp_path / "results")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    records = json.loads(r.stdout)
    assert sorted(rec["scheme"] for rec in records) == ["aff", "alf", "slf"]
    for rec in records:
        assert rec["method"] == "dynacl-air" and rec["method_params"]["lambda1"] == 0.5
        assert 0 <= rec["metrics"]["clean"] <= 100
    (enc,) = (tmp_path / "results").glob("runs/pretrain/*/encoder.pt")
    _, ck = load_encoder(enc)
    assert ck["finetune_branch"] == "pgd"
