"""Tests for benchmark/optim.py: LARS against its defining update rule, schedules, factory."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from benchmark.optim import LARS, build_optimizer, warmup_cosine_lambda

DT = torch.float64


def _params():
    w = torch.tensor([[0.5, -1.0, 2.0], [0.25, 0.0, -0.75]], dtype=DT)
    b = torch.tensor([0.1, -0.2, 0.3], dtype=DT)
    return [w, b]


# gradient at step k for parameter j: depends on the current weights, so that errors in the
# order of operations change later gradients too
OFFSETS = [
    [
        torch.tensor([[0.3, -0.1, 0.2], [0.0, 0.4, -0.5]], dtype=DT),
        torch.tensor([0.05, 0.0, -0.1], dtype=DT),
    ],
    [
        torch.tensor([[-0.2, 0.1, 0.0], [0.3, -0.3, 0.1]], dtype=DT),
        torch.tensor([-0.02, 0.07, 0.01], dtype=DT),
    ],
    [
        torch.tensor([[0.1, 0.1, -0.4], [0.2, 0.0, 0.6]], dtype=DT),
        torch.tensor([0.03, -0.04, 0.09], dtype=DT),
    ],
]


def grad_at(k: int, j: int, w: torch.Tensor) -> torch.Tensor:
    return 0.7 * w + OFFSETS[k][j]


def norm(x: torch.Tensor) -> float:
    return math.sqrt(float((x * x).sum()))


def expected_lars(lrs, momentum, wd, eta, eps, lr_in_momentum, exclude=False):
    """Hand-written LARS (You et al. 2017, Alg. 1 as used by ACL / torchlars)."""
    ws = [p.clone() for p in _params()]
    bufs = [torch.zeros_like(p) for p in ws]
    for k, lr in enumerate(lrs):
        for j in range(len(ws)):
            w = ws[j]
            g = grad_at(k, j, w)
            if exclude and w.ndim <= 1:
                local, decay = 1.0, 0.0
            else:
                wn, gn = norm(w), norm(g)
                local = eta * wn / (gn + wd * wn + eps) if (wn > 0 and gn > 0) else 1.0
                decay = wd
            if lr_in_momentum:  # ACL: buf = m buf + lr * local * (g + wd w); w -= buf
                bufs[j] = momentum * bufs[j] + lr * local * (g + decay * w)
                ws[j] = w - bufs[j]
            else:  # torchlars + SGD: buf = m buf + local * (g + wd w); w -= lr buf
                bufs[j] = momentum * bufs[j] + local * (g + decay * w)
                ws[j] = w - lr * bufs[j]
    return ws


def run_lars(lrs, **kw):
    ps = [p.clone().requires_grad_(True) for p in _params()]
    opt = LARS(ps, lr=lrs[0], **kw)
    for k, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for j, p in enumerate(ps):
            p.grad = grad_at(k, j, p.detach())
        opt.step()
    return [p.detach() for p in ps]


CONFIGS = [
    # (momentum, wd, eta, eps)
    (0.9, 1e-6, 1e-3, 0.0),  # ACL paper recipe
    (0.9, 1e-6, 1e-3, 1e-8),  # RoCL
    (0.9, 0.05, 0.5, 0.0),  # large trust and weight decay: every term visible
    (0.5, 0.1, 2.0, 1e-3),
    (0.0, 0.1, 0.5, 0.0),  # no momentum
]


@pytest.mark.parametrize("lr_in_momentum", [True, False])
@pytest.mark.parametrize("momentum,wd,eta,eps", CONFIGS)
def test_lars_matches_update_rule(momentum, wd, eta, eps, lr_in_momentum):
    lrs = [5.0, 2.0, 0.5]  # a changing lr distinguishes the two momentum conventions
    got = run_lars(
        lrs, momentum=momentum, weight_decay=wd, eta=eta, eps=eps, lr_in_momentum=lr_in_momentum
    )
    exp = expected_lars(lrs, momentum, wd, eta, eps, lr_in_momentum)
    for g, e in zip(got, exp):
        assert torch.allclose(g, e, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(got[0], _params()[0])  # something moved


def test_lars_momentum_conventions_differ_only_when_lr_changes():
    kw = dict(momentum=0.9, weight_decay=0.05, eta=0.5)
    a = run_lars([1.0, 1.0, 1.0], lr_in_momentum=True, **kw)
    b = run_lars([1.0, 1.0, 1.0], lr_in_momentum=False, **kw)
    assert all(torch.allclose(x, y, rtol=1e-12) for x, y in zip(a, b))
    a = run_lars([1.0, 0.3, 0.1], lr_in_momentum=True, **kw)
    b = run_lars([1.0, 0.3, 0.1], lr_in_momentum=False, **kw)
    assert not torch.allclose(a[0], b[0], rtol=1e-6)


def test_lars_torchlars_form_is_sgd_on_scaled_gradient():
    # torchlars: grad <- trust * (grad + wd * w), then SGD(momentum, weight_decay=0).step()
    lrs, m, wd, eta, eps = [0.4, 0.2, 0.1], 0.9, 0.01, 0.3, 1e-8
    got = run_lars(lrs, momentum=m, weight_decay=wd, eta=eta, eps=eps, lr_in_momentum=False)
    ps = [p.clone().requires_grad_(True) for p in _params()]
    sgd = torch.optim.SGD(ps, lr=lrs[0], momentum=m, weight_decay=0.0)
    for k, lr in enumerate(lrs):
        sgd.param_groups[0]["lr"] = lr
        for j, p in enumerate(ps):
            g = grad_at(k, j, p.detach())
            wn, gn = p.detach().norm(), g.norm()
            p.grad = (eta * wn / (gn + wd * wn + eps)) * (g + wd * p.detach())
        sgd.step()
    for g, e in zip(got, ps):
        assert torch.allclose(g, e.detach(), rtol=1e-12)


def test_lars_zero_norm_guard():
    lr, wd = 0.5, 0.1
    zero_w = torch.zeros(4, dtype=DT, requires_grad=True)  # ||w|| = 0: trust 1
    some_w = torch.tensor([1.0, -2.0, 0.5], dtype=DT, requires_grad=True)  # ||g|| = 0: trust 1
    opt = LARS([zero_w, some_w], lr=lr, momentum=0.9, weight_decay=wd, eta=1e-3)
    g0 = torch.tensor([0.1, -0.2, 0.3, 0.4], dtype=DT)
    zero_w.grad = g0.clone()
    some_w.grad = torch.zeros(3, dtype=DT)
    w1 = some_w.detach().clone()
    opt.step()
    assert torch.allclose(zero_w.detach(), -lr * g0, rtol=1e-15)  # plain SGD step, no eta
    assert torch.allclose(some_w.detach(), w1 - lr * wd * w1, rtol=1e-15)  # weight decay only
    assert torch.isfinite(zero_w).all() and torch.isfinite(some_w).all()
    # the trust ratio helper itself
    one = LARS.trust_ratio(torch.zeros(3), torch.ones(3), 0.0, 1e-3, 0.0)
    assert one.item() == 1.0
    assert LARS.trust_ratio(torch.ones(3), torch.zeros(3), 0.0, 1e-3, 0.0).item() == 1.0
    r = LARS.trust_ratio(torch.full((4,), 3.0), torch.full((4,), 4.0), 0.5, 1e-3, 0.0).item()
    assert math.isclose(r, 1e-3 * 6.0 / (8.0 + 0.5 * 6.0), rel_tol=1e-6)


def test_lars_exclude_bias_and_bn():
    lrs, kw = [1.0, 0.5, 0.25], dict(momentum=0.9, weight_decay=0.05, eta=0.5, eps=0.0)
    got = run_lars(lrs, exclude_bias_and_bn=True, **kw)
    exp = expected_lars(
        lrs, kw["momentum"], kw["weight_decay"], kw["eta"], kw["eps"], True, exclude=True
    )
    for g, e in zip(got, exp):
        assert torch.allclose(g, e, rtol=1e-12)
    # the 1-D parameter saw a plain momentum-SGD update, the 2-D one did not
    plain = run_lars(lrs, exclude_bias_and_bn=False, **kw)
    assert torch.allclose(got[0], plain[0], rtol=1e-12)
    assert not torch.allclose(got[1], plain[1], rtol=1e-6)


def test_lars_skips_params_without_grad_and_uses_groups():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = LARS([{"params": [a]}, {"params": [b], "lr": 0.0}], lr=1.0, eta=0.1)
    opt.step()  # no grads at all
    assert torch.equal(a.detach(), torch.ones(3))
    a.grad = torch.ones(3)
    b.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(a.detach(), torch.ones(3))
    assert torch.equal(b.detach(), torch.ones(3))  # lr 0 in its group


def test_lars_trains_a_model_with_scheduler_and_state_dict():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    opt = LARS(model.parameters(), lr=5.0, momentum=0.9, weight_decay=1e-6, eta=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine_lambda(20, 2, 1e-3))
    loss0 = torch.nn.functional.mse_loss(model(x), y).item()
    for _ in range(20):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    assert torch.nn.functional.mse_loss(model(x), y).item() < loss0
    sd = opt.state_dict()
    opt2 = LARS(model.parameters(), lr=5.0)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["eta"] == 1e-3 and opt2.param_groups[0]["lr_in_momentum"] is True
    assert len(opt2.state) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(lr=-1.0), "learning rate"),
        (dict(lr=1.0, momentum=1.0), "momentum"),
        (dict(lr=1.0, weight_decay=-1e-4), "weight_decay"),
        (dict(lr=1.0, eta=0.0), "eta"),
        (dict(lr=1.0, eps=-1.0), "eps"),
    ],
)
def test_lars_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        LARS([torch.zeros(2, requires_grad=True)], **kw)


# --------------------------------------------------------------------------------------------
# schedule
# --------------------------------------------------------------------------------------------


def test_warmup_cosine_key_points():
    total, warm, mn = 1000, 100, 1e-3
    f = warmup_cosine_lambda(total, warm, mn)
    assert f(0) == 0.0
    assert math.isclose(f(50), 0.5)
    assert math.isclose(f(99), 0.99)
    assert f(warm) == 1.0  # end of warm-up
    assert math.isclose(f(warm + (total - warm) // 2), (1 + mn) / 2, rel_tol=1e-12)  # midpoint
    assert math.isclose(f(total), mn, rel_tol=1e-12)  # end
    assert math.isclose(f(total + 10), mn, rel_tol=1e-12)  # clamped afterwards
    q = warm + (total - warm) // 4
    assert math.isclose(f(q), mn + (1 - mn) * 0.5 * (1 + math.cos(math.pi / 4)), rel_tol=1e-12)
    vals = [f(s) for s in range(total + 1)]
    assert all(a <= b for a, b in zip(vals[:warm], vals[1 : warm + 1]))  # increasing warm-up
    assert all(a >= b for a, b in zip(vals[warm:], vals[warm + 1 :]))  # decreasing decay


def test_warmup_cosine_start_ratio_and_no_warmup():
    f = warmup_cosine_lambda(200, 20, 0.0, start_ratio=1 / 15)
    assert math.isclose(f(0), 1 / 15)
    assert math.isclose(f(10), 1 / 15 + (1 - 1 / 15) * 0.5)
    assert f(20) == 1.0 and f(200) == 0.0
    g = warmup_cosine_lambda(10, 0, 0.1)
    assert g(0) == 1.0 and math.isclose(g(5), 0.55) and math.isclose(g(10), 0.1)
    h = warmup_cosine_lambda(10, 10, 0.1)  # warm-up only
    assert h(0) == 0.0 and h(9) == 0.9 and h(10) == 0.1


def test_warmup_cosine_with_lambdalr_acl_recipe():
    # ACL: lr 5.0, 10-epoch warm-up, cosine to absolute 1e-6, per iteration
    lr, epochs, iters = 5.0, 20, 3
    opt = LARS([torch.zeros(2, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine_lambda(epochs * iters, 10 * iters, min_ratio=1e-6 / lr)
    )
    seen = []
    for _ in range(epochs * iters + 1):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == 0.0
    assert math.isclose(seen[10 * iters], lr)
    assert math.isclose(seen[-1], 1e-6, rel_tol=1e-9)


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, 0, 0.0), "total_steps"),
        ((10, 11, 0.0), "warmup_steps"),
        ((10, -1, 0.0), "warmup_steps"),
        ((10, 2, 1.5), "min_ratio"),
        ((10, 2, 0.0, -0.1), "start_ratio"),
    ],
)
def test_warmup_cosine_validation(args, match):
    with pytest.raises(ValueError, match=match):
        warmup_cosine_lambda(*args)


# --------------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------------


def test_build_optimizer():
    params = [torch.zeros(3, requires_grad=True)]
    sgd = build_optimizer(params, "SGD", lr=0.5, momentum=0.9, weight_decay=1e-4, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["weight_decay"] == 1e-4 and sgd.param_groups[0]["nesterov"] is True
    lars = build_optimizer(
        params, "lars", lr=0.1, momentum=0.9, weight_decay=1e-6, eps=1e-8, lr_in_momentum=False
    )
    assert isinstance(lars, LARS)
    assert lars.param_groups[0]["eps"] == 1e-8 and lars.param_groups[0]["lr_in_momentum"] is False
    adam = build_optimizer(params, "adam", lr=1e-3, momentum=0.8)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["betas"] == (0.8, 0.999)
    adam2 = build_optimizer(params, "adam", lr=1e-3, betas=(0.9, 0.95))
    assert adam2.param_groups[0]["betas"] == (0.9, 0.95)
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'.*adam, lars, sgd"):
        build_optimizer(params, "rmsprop", lr=0.1)


class _SoloLARSWrapper:
    """solo-learn @f4a3279 ``solo/utils/lars.py`` (PyTorch Lightning's LARSWrapper) as released,
    over ``torch.optim.SGD``: the reference for ``clip_lr``."""

    def __init__(self, optim, eta, clip, eps=1e-8, exclude_bias_n_norm=False):
        self.optim, self.eta, self.clip, self.eps, self.exclude = optim, eta, clip, eps, exclude_bias_n_norm

    @torch.no_grad()
    def step(self):
        decays = []
        for group in self.optim.param_groups:
            wd = group.get("weight_decay", 0)
            decays.append(wd)
            group["weight_decay"] = 0
            for p in group["params"]:
                if p.grad is not None and (p.ndim != 1 or not self.exclude):
                    p_norm, g_norm = torch.norm(p.data), torch.norm(p.grad.data)
                    if p_norm != 0 and g_norm != 0:
                        new_lr = (self.eta * p_norm) / (g_norm + p_norm * wd + self.eps)
                        if self.clip:
                            new_lr = min(new_lr / group["lr"], 1)
                        p.grad.data += wd * p.data
                        p.grad.data *= new_lr
        self.optim.step()
        for group, wd in zip(self.optim.param_groups, decays):
            group["weight_decay"] = wd


@pytest.mark.parametrize("clip", [True, False])
def test_lars_is_solo_learns_wrapper(clip):
    """DeACL's teacher optimiser: LARS(eta 0.02, eps 1e-8, biases and BN excluded, SGD's momentum
    form, clip_lr) equals solo-learn's LARSWrapper over SGD step for step, under a changing lr whose
    small values make the clipping bind on some layers and not on others."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5))
    ours_model = copy.deepcopy(model)
    start = copy.deepcopy(model)
    ref = _SoloLARSWrapper(torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9, weight_decay=1e-5),
                           eta=0.02, clip=clip, exclude_bias_n_norm=True)
    ours = LARS(ours_model.parameters(), lr=0.4, momentum=0.9, weight_decay=1e-5, eta=0.02, eps=1e-8,
                exclude_bias_and_bn=True, lr_in_momentum=False, clip_lr=clip)
    clipped = set()
    for step, lr in enumerate([0.4, 0.003, 0.05, 0.4, 1e-4]):
        x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(step))
        for m, opt in ((model, ref.optim), (ours_model, ours)):
            opt.zero_grad()
            m(x).square().mean().backward()
            for group in opt.param_groups:
                group["lr"] = lr
        for p in model.parameters():
            if p.ndim > 1:
                trust = 0.02 * p.norm() / (p.grad.norm() + 1e-5 * p.norm() + 1e-8)
                clipped.add(bool(trust > lr))
        ref.step()
        ours.step()
        for a, b in zip(model.parameters(), ours_model.parameters()):
            assert torch.allclose(a, b, atol=1e-7, rtol=1e-6), (step, a.shape)
    assert clipped == {True, False}  # both sides of the min were exercised
    assert any(not torch.allclose(a, b) for a, b in zip(model.parameters(), start.parameters()))
    assert ours.defaults["clip_lr"] is clip and LARS(start.parameters(), lr=0.1).defaults["clip_lr"] is False


@torch.no_grad()
def _loop_lars_step(opt: LARS) -> None:
    """LARS.step as a per-parameter loop of torch ops (its form before it went multi-tensor)."""
    for group in opt.param_groups:
        lr, wd = group["lr"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            if group["exclude_bias_and_bn"] and p.ndim <= 1:
                d = p.grad.clone()
            else:
                trust = LARS.trust_ratio(p, p.grad, wd, group["eta"], group["eps"]).to(p.dtype)
                if group["clip_lr"] and lr > 0:
                    trust = torch.clamp(trust / lr, max=1.0)
                d = (p.grad.add(p, alpha=wd) if wd != 0 else p.grad.clone()).mul_(trust)
            if group["lr_in_momentum"]:
                d.mul_(lr)
            if group["momentum"] != 0:
                buf = opt.state[p].get("momentum_buffer")
                if buf is None:
                    buf = opt.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d)
                d = buf
            if group["lr_in_momentum"]:
                p.sub_(d)
            else:
                p.add_(d, alpha=-lr)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lr_in_momentum,exclude,clip", [(True, False, False), (False, True, True), (False, False, False)])
def test_multi_tensor_step_is_bit_identical_to_the_per_parameter_loop(dtype, lr_in_momentum, exclude, clip):
    """CPU records made before the multi-tensor step stay reproducible to the last bit."""
    def run(step_of):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 36, 4)).to(dtype)
        with torch.no_grad():
            m[1].bias.zero_()  # a layer of zero norm: trust 1
        opt = LARS([{"params": list(m[:2].parameters())}, {"params": list(m[3].parameters()), "lr": 0.1}],
                   lr=0.5, momentum=0.9, weight_decay=1e-4, eps=1e-8, eta=1e-3,
                   exclude_bias_and_bn=exclude, lr_in_momentum=lr_in_momentum, clip_lr=clip)
        for i, lr in enumerate((0.5, 0.3, 0.0, 0.2)):
            opt.param_groups[0]["lr"] = lr
            opt.zero_grad()
            m(torch.randn(5, 3, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(i))).pow(2).sum().backward()
            if i == 1:
                m[3].bias.grad = None  # a parameter without a gradient this step
            step_of(opt)
        return [*m.parameters(), *(s["momentum_buffer"] for s in opt.state.values())]

    for a, b in zip(run(LARS.step), run(_loop_lars_step), strict=True):
        assert torch.equal(a, b)
