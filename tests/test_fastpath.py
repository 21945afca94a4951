"""The fast path keeps the math: no host sync in a pretraining step, device-side adaptive lam,
packed parameter copies, torch.compile as an option that is recorded."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import adaptive_lam_reference, pretrain_config, training

from benchmark.augment import packed_copy, to_device
from benchmark.pretrain import EpochLog
from methods import list_methods
from methods.advcl import AdaptiveIPWeight
from methods.losses import a_info_nce, info_nce

META = torch.device("meta")


@pytest.mark.parametrize("name", list_methods())
def test_pretraining_step_never_reads_a_device_value(name):
    """On the meta device a tensor has no values: ``.item()``, ``bool()``, ``nonzero``, boolean
    indexing and every other host sync raise. A whole step (views, attack, loss, backward,
    optimiser, schedule, logs) must therefore run there, before and after AdvCL's lam warm-up."""
    tr = training(name, device=META)
    tr.model.train()
    log = EpochLog(2, META)
    warm = getattr(tr.method.params, "adaptive_epochs", None) or 0
    for i, epoch in enumerate((1, warm + 1)):  # the second one uses the adaptive lam when there is one
        tr.step(torch.arange(8 * i, 8 * i + 8, device=META), epoch, i, log)
    assert log.losses.device.type == "meta"
    assert all(p.grad is not None for p in tr.model.encoder.parameters())


def test_a_sync_would_be_caught_on_meta():
    with pytest.raises(RuntimeError):
        bool(torch.ones(3, device=META).sum() > 0)
    with pytest.raises(RuntimeError):  # NotImplementedError: boolean indexing needs the values
        torch.ones(3, device=META)[torch.ones(3, dtype=torch.bool, device=META)]


def _positive_mask(v: int, b: int) -> torch.Tensor:
    """Row a = view * b + instance: a and c are positives when they show the same instance."""
    idx = torch.arange(v * b)
    return (idx[:, None] % b == idx[None, :] % b) & ~torch.eye(v * b, dtype=torch.bool)


@pytest.mark.parametrize("hn", [None, (1.0, 0.1)])
def test_a_info_nce_takes_lam_as_a_device_tensor(hn):
    z = F.normalize(torch.randn(4, 6, 8, dtype=torch.float64), dim=-1).requires_grad_(True)
    z2 = z.detach().clone().requires_grad_(True)
    lam = torch.tensor(0.3, dtype=torch.float64)
    a = a_info_nce(z, adv=(0,), ip=0.3, adv_weight=1.2, hn=hn)
    b = a_info_nce(z2, adv=(0,), ip=lam, adv_weight=1.2, hn=hn)
    a.backward()
    b.backward()
    assert torch.equal(a, b)
    assert torch.equal(z.grad, z2.grad)
    with pytest.raises(ValueError, match="0-d float tensor"):
        a_info_nce(z, ip=torch.tensor([0.3]))


@pytest.mark.parametrize("v,b", [(2, 2), (2, 5), (3, 4), (3, 5), (4, 3)])
def test_info_nce_equals_the_boolean_mask_sum(v, b):
    """The positives are gathered, not boolean-indexed (a host sync): same value as the mask sum."""
    z = F.normalize(torch.randn(v, b, 7, dtype=torch.float64), dim=-1)
    zf = z.reshape(-1, 7)
    s = zf @ zf.T / 0.5
    l_ab = s.masked_fill(torch.eye(v * b, dtype=torch.bool), -math.inf).logsumexp(1)[:, None] - s
    pos = _positive_mask(v, b)
    assert torch.allclose(info_nce(z, 0.5), l_ab[pos].sum() / (v * b * (v - 1)), rtol=0, atol=1e-12)


def test_adaptive_lam_on_the_device_equals_the_scalar_rule():
    dev = AdaptiveIPWeight(0.2, 2, 0.4)
    total, count = 0.0, 0  # the scalar reference's running sum (batch-size weighted)
    g = torch.Generator().manual_seed(0)
    d_ts = torch.rand(40, generator=g, dtype=torch.float64) * 1.2
    regimes = set()
    for k, d_t in enumerate(d_ts.float()):  # float32 distances, as the step computes them
        epoch = 1 + k // 10
        lam = dev(d_t, 8, epoch)
        if epoch <= 2:  # warm-up: lam0, d_bar accumulates
            total, count = total + float(d_t) * 8, count + 8
            assert lam == 0.2
            continue
        ref = adaptive_lam_reference(float(d_t), total / count, 0.4, 0.2)
        regimes.add(0.2 if ref == 0.2 else 0.5 if ref == 0.5 else "between")
        assert isinstance(lam, torch.Tensor) and lam.dtype == torch.float64 and lam.ndim == 0
        # float32 d_t accumulated in float64 on the device, exactly as float() then Python does
        assert float(lam) == pytest.approx(ref, abs=1e-12), (k, float(d_t))
    assert regimes == {0.2, 0.5, "between"}  # every branch of the rule was exercised
    assert dev.d_bar == pytest.approx(total / count, rel=1e-12)
    resumed = AdaptiveIPWeight(0.2, 2, 0.4)
    resumed.load_state_dict(dev.state_dict())
    d_t = torch.tensor(0.45)
    assert float(resumed(d_t, 8, 5)) == pytest.approx(adaptive_lam_reference(float(d_t), total / count, 0.4, 0.2),
                                                      abs=1e-12)


def test_packed_copy_round_trip():
    ts = [torch.arange(6).view(2, 3), torch.rand(4, dtype=torch.float64), torch.tensor([True, False]),
          torch.arange(3), torch.rand(2, 2, dtype=torch.float64)]
    out = packed_copy(ts, torch.device("cpu"))
    assert [o.shape for o in out] == [t.shape for t in ts]
    assert all(torch.equal(o, t) and o.dtype == t.dtype for o, t in zip(out, ts))
    assert to_device(ts, torch.device("cpu")) is ts  # already there: no copy at all
    assert [o.device.type for o in packed_copy(ts, META)] == ["meta"] * len(ts)


def test_epoch_log_sums_numbers_on_the_host_and_tensors_on_the_device():
    log = EpochLog(3, torch.device("cpu"))
    for i in range(3):
        log.add(i, torch.tensor(float(i)), {"lam": 0.2, "d_t": torch.tensor(0.5)})
    assert isinstance(log.sums["lam"], float) and log.sums["lam"] == pytest.approx(0.6)
    assert isinstance(log.sums["d_t"], torch.Tensor) and float(log.sums["d_t"]) == pytest.approx(1.5)


@pytest.mark.parametrize("name", ["acl", "rocl-ip", "advcl-ip"])
def test_compiled_model_runs_the_same_steps(name, monkeypatch):
    """Through torch.compile (dynamo graphs, here with the aot_eager backend: inductor's C++
    build takes minutes on 2 cores) the steps give the eager losses and weights."""
    import benchmark.pretrain as pretrain

    eager_compile = pretrain.compile_model
    monkeypatch.setattr(pretrain, "compile_model", lambda model: eager_compile(model, backend="aot_eager"))
    eager, compiled = training(name), training(name, compile=True)
    assert compiled.model.encoder._compiled_call_impl is not None
    assert pretrain_config(name, compile=True).to_dict()["compile"] is True
    assert "compile" not in pretrain_config(name).to_dict()
    logs = EpochLog(2, torch.device("cpu")), EpochLog(2, torch.device("cpu"))
    for tr, log in zip((eager, compiled), logs):
        torch.manual_seed(1)
        tr.model.train()
        for i, epoch in enumerate((1, 31)):  # 31: after advcl-ip's warm-up (adaptive lam)
            tr.step(torch.arange(8 * i, 8 * i + 8), epoch, i, log)
    assert torch.allclose(logs[0].losses, logs[1].losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager.model.state_dict().values(), compiled.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)
