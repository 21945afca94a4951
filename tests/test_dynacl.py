"""DynACL (methods/dynacl.py): its loss and attack objective against a re-derivation of the released
formulas (PKU-ML/DYNACL ``train_DynACL.py``, ``utils.py`` ``nt_xent``), the schedules (strength,
weight, per-epoch learning rate), the momentum encoder (swap, EMA before the backward, exported as
the finetuned encoder), one step, pass counts per step, and a smoke run through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import CPU, one_step, pretrain_config, random_data, training

from benchmark.checkpoints import load_encoder
from benchmark.cli import main
from benchmark.errors import AcbenchError
from benchmark.io import load_checkpoint
from benchmark.optim import warmup_cosine_lambda
from benchmark.perf import PerfBench
from benchmark.perf_measure import PassCounter
from benchmark.pretrain import build_training, run_pretrain
from methods import get_method
from methods.base import Batch
from methods.dynacl import (
    EMA_ENCODER,
    EMA_HEAD,
    DynACL,
    dynacl_weight,
    dynamic_strength,
    epoch_warmup_cosine_lambda,
)

T = 0.5


def unit(rows: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, d, generator=g, dtype=torch.float64)


def nt_xent_released(f: torch.Tensor) -> torch.Tensor:
    """The release's ``nt_xent`` re-derived, row by row: rows 2k and 2k+1 are a positive pair; the
    denominator sums every other row (the release subtracts exp(1/T), the self term of a unit row)."""
    f = F.normalize(f, dim=-1)
    terms = []
    for a in range(f.shape[0]):
        b = a + 1 if a % 2 == 0 else a - 1
        s = f @ f[a] / T
        den = sum(torch.exp(s[c]) for c in range(f.shape[0]) if c != a)
        terms.append(-torch.log(torch.exp(s[b]) / den))
    return torch.stack(terms).mean()


def interleave(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    f = torch.empty(2 * v1.shape[0], v1.shape[1], dtype=v1.dtype)
    f[::2], f[1::2] = v1, v2
    return f


# ---- the loss and the attack objective --------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("w", [1.0, 1.3333, 5 / 3])
def test_loss_is_the_released_weighted_nt_xent(n, w):
    m = get_method("dynacl", dataset="cifar10")
    u0 = unit(4 * n, 8, n).view(4, n, 8)  # t1, t2, adv1, adv2 (raw embeddings)

    def ours(u):
        z = F.normalize(u, dim=-1)
        return m.loss(torch.cat([z[0], z[1]]), torch.cat([z[2], z[3]]), n, w)[0]

    def ref(u):
        return 0.5 * ((2 - w) * nt_xent_released(interleave(u[0], u[1])) + w * nt_xent_released(interleave(u[2], u[3])))

    u1, u2 = u0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
    v1, v2 = ours(u1), ref(u2)
    (g1,), (g2,) = torch.autograd.grad(v1, u1), torch.autograd.grad(v2, u2)
    assert abs(v1.item() - v2.item()) < 1e-10
    assert g2.abs().max() > 1e-6 and (g1 - g2).abs().max() < 1e-10


@pytest.mark.parametrize("n", [2, 7])
def test_attack_objective_is_the_released_nt_xent_of_the_swapped_views(n):
    m = get_method("dynacl", dataset="cifar10")
    u0 = unit(2 * n, 8, 10 + n).view(2, n, 8)
    u1, u2 = u0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
    v1 = m.contrast(F.normalize(torch.cat([u1[0], u1[1]]), dim=-1), n)
    v2 = nt_xent_released(interleave(u2[0], u2[1]))
    (g1,), (g2,) = torch.autograd.grad(v1, u1), torch.autograd.grad(v2, u2)
    assert abs(v1.item() - v2.item()) < 1e-10 and (g1 - g2).abs().max() < 1e-10


# ---- schedules --------------------------------------------------------------------------------------


def test_strength_and_weight_follow_the_release_one_epoch_apart():
    E = 1000
    # strength: set at e = 1, 51, 101, ... to 1 - (e - 1) / E
    assert [dynamic_strength(e, E, 20) for e in (1, 50, 51, 100, 101, 951, 1000)] == pytest.approx(
        [1.0, 1.0, 0.95, 0.95, 0.9, 0.05, 0.05])
    # weight: floor(e / 50): it moves at e = 50, one epoch before the strength
    lam = 2 / 3
    assert dynacl_weight(49, E, 20, lam) == 1.0
    assert dynacl_weight(50, E, 20, lam) == pytest.approx(1 + 0.05 * lam)
    assert dynacl_weight(1000, E, 20, lam) == pytest.approx(1 + lam)
    assert dynacl_weight(50, E, 20, lam, aligned=True) == 1.0
    assert dynacl_weight(51, E, 20, lam, aligned=True) == pytest.approx(1 + 0.05 * lam)
    assert dynacl_weight(1000, E, 20, 2.0) == 2.0  # capped at 2
    # a shortened run keeps 20 stages: K = 1 at E = 20
    assert dynamic_strength(20, 20, 20) == pytest.approx(0.05) and dynamic_strength(2, 20, 20) == pytest.approx(0.95)
    m = get_method("dynacl")
    assert m.on_epoch_start(50, E) == {"strength": 1.0, "adv_weight": pytest.approx(1 + 0.05 * lam)}
    assert get_method("dynacl", weight_epoch="aligned").adv_weight(50, E) == 1.0


def test_learning_rate_is_stepped_per_epoch_as_released():
    spe, E = 3, 1000
    m = get_method("dynacl", dataset="cifar10")
    recipe = m.paper_recipe("cifar10")
    f = m.lr_lambda(recipe, spe, E * spe)
    lr = [recipe.lr * f(s) for s in range(E * spe)]
    assert lr[0] == pytest.approx(0.5) and lr[spe - 1] == pytest.approx(0.5)  # epoch 1: 0.5, constant
    assert lr[9 * spe] == pytest.approx(5.0) and lr[10 * spe] == pytest.approx(5.0)  # epochs 10 and 11
    assert lr[4 * spe] == pytest.approx(2.5)  # epoch 5: 0.5 e
    mid = 10 + (E - 10) // 2  # half-way through the cosine: (lr + 1e-6) / 2
    assert lr[mid * spe] == pytest.approx((5.0 + 1e-6) / 2, rel=1e-3)
    assert all(lr[e * spe] == lr[e * spe + 2] for e in range(E))  # per epoch
    it = get_method("dynacl", lr_schedule="iteration").lr_lambda(recipe, spe, E * spe)
    assert it(0) == 0.0 and it(1) > 0  # ACL's per-iteration warm-up from 0
    g = epoch_warmup_cosine_lambda(spe, 4, 0, 0.1)  # no warm-up: cosine from epoch 1
    assert g(0) == 1.0 and g(4 * spe) == pytest.approx(0.1)


def _config(epochs: int, warmup_epochs: float = 0, **params):
    cfg = pretrain_config("dynacl", **params)
    return dataclasses.replace(cfg, recipe=cfg.recipe.replace(epochs=epochs, warmup_epochs=warmup_epochs,
                                                              warmup_start=0.0))


def test_the_training_loop_uses_the_methods_schedule():
    cfg = _config(epochs=4, warmup_epochs=2)
    tr = build_training(cfg, random_data(16, cfg.image_size), CPU)
    f = tr.scheduler.lr_lambdas[0]  # 2 steps per epoch
    cos = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 2))
    assert [f(s) for s in range(8)] == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.0, 1.0, cos, cos])


# ---- the momentum encoder ---------------------------------------------------------------------------


def test_model_holds_an_ema_copy_without_gradients():
    m = get_method("dynacl")
    tr = training("dynacl", n=16, batch_size=8)
    model = tr.model
    enc, head = model.extra_heads[EMA_ENCODER], model.extra_heads[EMA_HEAD]
    assert all(not p.requires_grad for p in [*enc.parameters(), *head.parameters()])
    for a, b in zip([*model.encoder.parameters(), *model.head.parameters()], [*enc.parameters(), *head.parameters()]):
        assert torch.equal(a, b)  # initialised equal (_init_encoder_k)
    assert model.head.linears[0].bias is not None
    assert model.head.linears[1].bias is None and model.head.linears[2].bias is None  # proj_head
    assert m.finetune_branch == "pgd"


def test_swap_sends_view_1_through_the_online_encoder_and_view_2_through_the_ema_copy():
    tr = training("dynacl", n=16, batch_size=8)
    m, model = tr.method, tr.model.eval()
    enc = model.extra_heads[EMA_ENCODER]
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = tr.images[:8].float() / 255
    with torch.no_grad():
        z = m.swap_forward(model, x, 4, "pgd")
        online = model(x, "pgd")
        ema = F.normalize(model.extra_heads[EMA_HEAD](enc(x, "pgd"), "pgd"), dim=-1)
    assert torch.allclose(z[:4], online[:4], atol=1e-6) and torch.allclose(z[4:], ema[4:], atol=1e-6)
    assert not torch.allclose(online[4:], ema[4:], atol=1e-3)


def test_one_step_updates_the_ema_before_the_backward_and_only_the_online_encoder_learns():
    tr = training("dynacl", n=16, batch_size=8)
    m, model = tr.method, tr.model
    enc = model.extra_heads[EMA_ENCODER]
    with torch.no_grad():  # an online encoder away from its copy, so that the EMA shows
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    q0 = [p.detach().clone() for p in model.encoder.parameters()]
    k0 = [p.detach().clone() for p in enc.parameters()]
    bn_k0 = {k: v.clone() for k, v in enc.state_dict().items() if "running_mean" in k}
    idx = torch.arange(8)
    batch = Batch(images=tr.images[idx].float() / 255, indices=idx, epoch=1, epochs=1000, step=0)
    model.train()
    loss, logs = m.training_step(model, batch)
    for q, k, k_before in zip(q0, enc.parameters(), k0):  # m k + (1 - m) q, q before its update
        assert torch.allclose(k, 0.99 * k_before + 0.01 * q, atol=1e-7)
    assert any(not torch.equal(v, bn_k0[k]) for k, v in enc.state_dict().items() if k in bn_k0)  # own BN stats
    loss.backward()
    assert all(p.grad is None for p in enc.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert set(logs) == {"loss", "clean", "adv"} and torch.isfinite(loss)
    assert loss.item() == pytest.approx(0.5 * (logs["clean"].item() + logs["adv"].item()), rel=1e-6)  # w = 1


def test_one_step_on_synthetic_data():
    s = one_step("dynacl")
    assert torch.isfinite(s.loss) and s.loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.model.encoder.parameters())
    changed = {b for b in s.method.branches for k, v in s.model.state_dict().items()
               if f".bn.{b}.running_mean" in k and k.startswith("extra_heads.") and not torch.equal(v, s.before[k])}
    assert changed == {"normal", "pgd"}  # the EMA copy's BN sees both branches
    assert s.method.views.strength == 1.0


def test_late_epoch_weakens_the_views_and_weights_the_adversarial_term():
    tr = training("dynacl", n=16, batch_size=8)
    idx = torch.arange(8)
    batch = Batch(images=tr.images[idx].float() / 255, indices=idx, epoch=20, epochs=20, step=0)
    tr.model.train()
    loss, logs = tr.method.training_step(tr.model, batch)
    assert tr.method.views.strength == pytest.approx(0.05)
    w = tr.method.adv_weight(20, 20)
    assert w == pytest.approx(1 + 2 / 3)
    assert loss.item() == pytest.approx(0.5 * ((2 - w) * logs["clean"] + w * logs["adv"]).item(), rel=1e-6)


def test_encoder_file_holds_the_ema_copy(tmp_path):
    cfg = _config(epochs=1)
    run_pretrain(cfg, random_data(16, cfg.image_size), tmp_path, CPU, progress=False)
    encoder, ck = load_encoder(tmp_path / "encoder.pt")
    model_state = load_checkpoint(tmp_path / "last.pt", kind="pretrain-state")["model"]
    prefix = f"extra_heads.{EMA_ENCODER}."
    ema = {k[len(prefix):]: v for k, v in model_state.items() if k.startswith(prefix)}
    online = {k[len("encoder."):]: v for k, v in model_state.items() if k.startswith("encoder.")}
    assert set(encoder.state_dict()) == set(ema)
    assert all(torch.equal(encoder.state_dict()[k], ema[k]) for k in ema)
    assert any(not torch.equal(ema[k], online[k]) for k in ema)  # not the online encoder
    assert not any(k.startswith("extra_heads.") for k in ck["state_dict"])
    assert ck["finetune_branch"] == "pgd"


# ---- parameters, recipe, cost -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(ema=1.0), dict(ema=-0.1), dict(stages=0), dict(reweight=-1.0),
                                 dict(weight_epoch="late"), dict(lr_schedule="step"), dict(interpolation="area")])
def test_params_validate_themselves(bad):
    with pytest.raises(AcbenchError):
        get_method("dynacl", **bad)


def test_paper_recipe_and_description():
    for ds in ("cifar10", "cifar100", "stl10"):
        d = get_method("dynacl", dataset=ds).describe()
        r = d["paper_recipe"]
        assert (r["epochs"], r["batch_size"], r["optimizer"], r["lr"], r["weight_decay"], r["warmup_epochs"]) == (
            1000, 512, "lars", 5.0, 1e-6, 10)
        assert r["min_lr_ratio"] * r["lr"] == pytest.approx(1e-6)
        assert d["params"]["ema"] == 0.99 and d["params"]["interpolation"] == "bilinear"
    assert DynACL.branches == ("normal", "pgd")


def _stem_counts(bench: PerfBench) -> dict[str, dict[str, float]]:
    model = bench.model
    with PassCounter(model.encoder.conv1) as q, PassCounter(model.extra_heads[EMA_ENCODER].conv1) as k:
        bench.harness_step()
    return {"online": q.per_image(bench.batch_size), "ema": k.per_image(bench.batch_size)}


@pytest.mark.parametrize("k", [2, 5])
def test_passes_per_step(k):
    """Per image of the batch, K attack steps: view 1 through the online encoder, view 2 through
    the EMA copy, each K forwards + K input-only backwards in the attack and 2 forwards (clean,
    adversarial) in the loss; only the online encoder's 2 back-propagate into weights. Total:
    2K + 4 forwards, 2K input backwards, 2 weight backwards (ACL: 2K + 4, 2K, 4); WAVE2.md section
    7's units (backward 2): 12K + 8 = 38 at K = 5, against ACL's 42."""
    bench = PerfBench("dynacl", "smoke", batch_size=4, device="cpu", params={"attack_steps": k})
    c = _stem_counts(bench)
    assert c["online"] == {"forward": k + 2, "input_backward": k, "weight_backward": 2}
    assert c["ema"] == {"forward": k + 2, "input_backward": k, "weight_backward": 0}
    units = sum(v["forward"] + 2 * v["input_backward"] + 2 * v["weight_backward"] for v in c.values())
    assert units == 6 * k + 8  # 38 at K = 5


# ---- end to end -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_run_through_the_cli(tmp_path):
    r = CliRunner().invoke(main, ["run", "--method", "dynacl", "--preset", "smoke", "--quiet", "--attacks", "pgd20",
                                  "--json", "--results", str(tmp_path / "results")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    records = json.loads(r.stdout)
    assert sorted(rec["scheme"] for rec in records) == ["aff", "alf", "slf"]
    for rec in records:
        assert rec["method"] == "dynacl" and rec["method_params"]["ema"] == 0.99
        assert 0 <= rec["metrics"]["clean"] <= 100
    (enc,) = (tmp_path / "results").glob("runs/pretrain/*/encoder.pt")
    _, ck = load_encoder(enc)
    assert not any(k.startswith("extra_heads.") for k in ck["state_dict"])


@pytest.mark.parametrize("name", ["acl", "simclr", "rocl"])
def test_default_hooks_leave_the_other_methods_unchanged(name):
    """``Method.lr_lambda`` and ``Method.export_state_dict`` default to the loop's former schedule
    (per-iteration warm-up + cosine) and the whole model state."""
    cfg = pretrain_config(name)
    cfg = dataclasses.replace(cfg, recipe=cfg.recipe.replace(epochs=3, warmup_epochs=1.5, warmup_start=0.1))
    tr = build_training(cfg, random_data(32, cfg.image_size), CPU)
    f, r = tr.scheduler.lr_lambdas[0], cfg.recipe
    ref = warmup_cosine_lambda(tr.total_steps, round(r.warmup_epochs * tr.steps_per_epoch), r.min_lr_ratio,
                               start_ratio=r.warmup_start)
    assert [f(s) for s in range(tr.total_steps + 1)] == [ref(s) for s in range(tr.total_steps + 1)]
    state, exported = tr.model.state_dict(), tr.method.export_state_dict(tr.model)
    assert list(exported) == list(state) and all(exported[k] is state[k] or torch.equal(exported[k], state[k])
                                                 for k in state)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    """The EMA copy is part of the model state in ``last.pt``; strength and weight follow the epoch."""
    cfg = _config(epochs=2, stages=2)
    data = random_data(16, cfg.image_size)
    run_pretrain(cfg, data, tmp_path / "a", CPU, progress=False)

    def stop(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pretrain(cfg, data, tmp_path / "b", CPU, progress=False, on_epoch_end=stop)
    run_pretrain(cfg, data, tmp_path / "b", CPU, progress=False)
    a = load_checkpoint(tmp_path / "a" / "encoder.pt", kind="encoder")["state_dict"]
    b = load_checkpoint(tmp_path / "b" / "encoder.pt", kind="encoder")["state_dict"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
