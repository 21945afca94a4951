"""acbench perf: pass counts per pretraining step (hardware independent) for every registered
method, attacks without weight gradients, the bare step against the harness step, the report."""

from __future__ import annotations

import json

import pytest
import torch

import methods.acl
import methods.advcl
import methods.rocl
from benchmark.config import PRESETS
from benchmark.errors import ConfigError, UnknownName
from benchmark.perf import KEYS, PerfBench, perf_all, perf_report, render_table, reports_json
from benchmark.perf_epoch import render_epochs, time_epochs
from benchmark.perf_measure import FlopCounter, PassCounter, forward_equivalents
from methods import list_methods

B = 4  # images per batch: small and fast; the counts are per image


def _bench(method: str, precision: str = "fp32", **params) -> PerfBench:
    return PerfBench(method, "smoke", batch_size=B, device="cpu", precision=precision, params=params)


# Per image, K attack steps (docs/methods.md):
#   ACL:   attack 2K view forwards + 2K input-only backwards; loss 4 views (2 clean, 2 adv) fwd + bwd
#   RoCL:  1 no-grad target forward; attack K forwards + K input-only backwards; regulariser 2 views
#          (its own forward, as released) + loss 3 views
#   AdvCL: 3 no-grad clean forwards (t1, t2, HFC); attack 2K (x_cl, x_ce) forwards + 2K input-only
#          backwards; loss 5 (x_cl, t1, t2, HFC, x_ce); adaptive IP variants: + 2 no-grad d_t forwards
#   SimCLR: 2 views forward + backward
FORMULAS = {
    "acl": lambda k: {"forward": 2 * k + 4, "input_backward": 2 * k, "weight_backward": 4},
    "rocl": lambda k: {"forward": 1 + k + 2 + 3, "input_backward": k, "weight_backward": 5},
    "advcl": lambda k: {"forward": 3 + 2 * k + 5, "input_backward": 2 * k, "weight_backward": 5},
    "advcl-adaptive": lambda k: {"forward": 3 + 2 * k + 5 + 2, "input_backward": 2 * k, "weight_backward": 5},
    "simclr": lambda k: {"forward": 2, "input_backward": 0, "weight_backward": 2},
    # DynACL: both copies counted (view 1 online, view 2 momentum copy, as released): attack 2K forwards +
    # 2K input-only backwards; loss 4 views forward, the 2 online ones backward (the EMA copy has no grads)
    "dynacl": lambda k: {"forward": 2 * k + 4, "input_backward": 2 * k, "weight_backward": 2},
    # ACL-AIR / DynACL-AIR: ACL + the un-augmented image x_o (its own forward and backward)
    "air": lambda k: {"forward": 2 * k + 5, "input_backward": 2 * k, "weight_backward": 5},
    # DeACL: attack K student forwards + K input-only backwards; loss: one forward of [x; x_adv] and its
    # backward (the frozen teacher's forward runs on another module: not counted by the stem counter)
    "deacl": lambda k: {"forward": k + 2, "input_backward": k, "weight_backward": 2},
    # RCS: ACL's step on the coreset (the selection's passes, per pool image 2K + 4 forwards and 2K input
    # backwards, are counted apart in tests/test_rcs.py)
    "rcs": lambda k: {"forward": 2 * k + 4, "input_backward": 2 * k, "weight_backward": 4},
}
FAMILY = {
    "acl": "acl", "simclr": "simclr",
    "rocl": "rocl", "rocl-ip": "rocl", "rocl-hn": "rocl", "rocl-iphn": "rocl",
    "advcl": "advcl", "advcl-hn": "advcl", "advcl-ip": "advcl-adaptive", "advcl-iphn": "advcl-adaptive",
    "dynacl": "dynacl", "acl-air": "air", "dynacl-air": "air", "deacl": "deacl", "deacl-teacher": "simclr",
    "dynacl-rcs": "rcs", "acl-rcs": "rcs",
    # a ++ method's pretraining step is its base method's (the LP-AFT stage: tests/test_postprocess.py)
    "dynacl++": "dynacl", "dynacl-air++": "air", "acl-air++": "air",
}


def _formula(method: str, k: int) -> dict[str, float]:
    if method not in FAMILY:
        pytest.fail(f"no pass formula for the registered method {method!r}: add it to FAMILY/FORMULAS")
    return FORMULAS[FAMILY[method]](k)


def _params(method: str) -> dict[str, int]:
    """Two attack steps for methods with an attack: fast, and K still shows in the counts."""
    return {"attack_steps": 2} if FAMILY.get(method) != "simclr" else {}


@pytest.mark.parametrize(
    "method,k,expected",
    [
        ("acl", 5, 32),  # 4K + 12
        ("rocl", 7, 30),  # 2K + 16 (2K + 10 with reg_forward="shared")
        ("advcl", 5, 38),  # 4K + 18 (the released code recomputes the clean views: about 50)
        ("advcl-ip", 5, 40),  # 4K + 20
        ("simclr", 0, 6),
        ("deacl", 5, 16),  # K + 2 forwards, K input-only backwards, 2 weight backwards
    ],
)
def test_passes_per_step_match_the_formula_at_paper_attack_steps(method, k, expected):
    bench = _bench(method)  # the method's default attack steps
    assert bench.attack_steps == k
    _, passes = bench.count(bench.harness_step)
    assert passes == _formula(method, k)
    assert forward_equivalents(passes) == expected


@pytest.mark.parametrize("method", list_methods())
def test_passes_per_step_of_every_registered_method(method):
    bench = _bench(method, **_params(method))
    _, passes = bench.count(bench.harness_step)
    assert passes == _formula(method, bench.attack_steps)
    # the bare loop runs the method's own step: the same passes
    _, bare = bench.count(lambda: bench.bare_step(bench.next_batch()))
    assert bare == passes


@pytest.mark.parametrize("method", list_methods())
def test_forward_flops_of_every_registered_method(method):
    """The fwd-equiv column's denominator: one forward of encoder + head (DeACL's is no head)."""
    bench = _bench(method, **_params(method))
    assert bench.forward_flops_per_image() > 0


def test_passes_are_counted_under_bf16_autocast():
    """The stem's weight is cast per call under autocast: the count must not depend on it."""
    bench = _bench("acl", precision="bf16", attack_steps=2)
    _, passes = bench.count(bench.harness_step)
    assert passes == _formula("acl", 2)


def test_flop_count_of_acl_step_is_4k_plus_12_forwards():
    bench = _bench("acl")
    flops, _ = bench.count(bench.harness_step)
    # matmuls of the augmentation and the loss are included: within 3% of 32 at this size
    assert flops / bench.forward_flops_per_image() == pytest.approx(32, rel=0.03)


@pytest.mark.parametrize(
    "method,module,views", [("acl", methods.acl, 2), ("rocl", methods.rocl, 1), ("advcl", methods.advcl, 2)]
)
def test_attacks_compute_no_weight_gradients(method, module, views, monkeypatch):
    bench = _bench(method, attack_steps=2)
    seen = []
    original = module.contrastive_pgd

    def spy(loss_fn, inputs, *args, **kwargs):
        with PassCounter(bench.model.encoder.conv1) as passes, FlopCounter() as flops:
            out = original(loss_fn, inputs, *args, **kwargs)
        seen.append((passes, flops.by_op()))
        assert all(p.grad is None for p in bench.model.parameters())  # nothing accumulated
        return out

    monkeypatch.setattr(module, "contrastive_pgd", spy)
    bench.harness_step()  # the first step: no gradients exist before it
    ((passes, ops),) = seen
    assert passes.weight_backward == 0  # the stem's backward never computes its weight gradient
    assert passes.input_backward == passes.forward == 2 * views * B
    # FlopCounterMode: an input-only backward costs one forward (the weight half is not computed)
    assert ops["aten.convolution_backward"] == pytest.approx(ops["aten.convolution"], rel=0.02)


@pytest.mark.parametrize("method", list_methods())
def test_bare_step_is_the_harness_step(method):
    """Same seed and weights: the bare loop gives the harness's loss, gradients and update."""
    harness, bare = _bench(method, **_params(method)), _bench(method, **_params(method))
    before = [p.detach().clone() for p in harness.model.parameters()]
    torch.manual_seed(1)
    harness.harness_step()
    torch.manual_seed(1)
    loss = bare.bare_step(bare.next_batch())
    assert float(loss) == float(harness.log.losses[0])
    h_params, b_params = list(harness.model.parameters()), list(bare.model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, h_params))  # the step moved the weights
    for a, b in zip(h_params, b_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    for a, b in zip(harness.model.buffers(), bare.model.buffers()):  # BN running statistics
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _check_report(r: dict, method: str, rounds: int) -> None:
    assert set(KEYS) <= set(r)
    assert r["method"] == method and r["rounds"] == rounds and len(r["round_ratios"]) == rounds
    assert r["harness_images_per_s"] > 0 and r["bare_images_per_s"] > 0
    assert 0 < r["ratio_min"] <= r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"] <= r["ratio_max"]
    assert r["ratio_min"] == pytest.approx(min(r["round_ratios"]), abs=1e-3)
    assert r["ratio_max"] == pytest.approx(max(r["round_ratios"]), abs=1e-3)
    assert r["peak_memory_mb"] > 0 and r["peak_memory_kind"].startswith("cpu tensors")


def test_perf_report_shape():
    r = perf_report("rocl", batch_size=B, steps=2, rounds=3, warmup=0, device="cpu")
    _check_report(r, "rocl", 3)
    assert r["attack_steps"] == 7 and r["batch_size"] == B and r["precision"] == "fp32"
    assert r["passes_per_image"] == _formula("rocl", 7)
    assert r["forward_equivalents_per_image"] == pytest.approx(30, rel=0.03)  # 2K + 16 at K = 7
    json.loads(reports_json([r]))  # JSON-serialisable as is


def test_perf_all_table_json_and_cpu_clock():
    res = perf_all(["simclr", "acl"], batch_size=B, steps=1, rounds=2, warmup=0, device="cpu",
                   clock="cpu", params=None)
    assert res.failures == []
    (simclr, acl) = res.reports
    _check_report(simclr, "simclr", 2)
    assert acl["method"] == "acl" and acl["clock"] == "cpu"
    assert acl["forward_equivalents_per_image"] == pytest.approx(32, rel=0.03)
    text = render_table(res.reports)
    assert "| method" in text and "harness img/s" in text and "bare img/s" in text
    assert "ratio IQR" in text and "cpu clock" in text
    rows = [line for line in text.splitlines() if line.startswith("| simclr") or line.startswith("| acl")]
    assert len(rows) == 2
    assert [r["method"] for r in json.loads(reports_json(res.reports))] == ["simclr", "acl"]


def test_perf_all_goes_on_past_a_failing_method():
    lines = []
    res = perf_all(["acl"], batch_size=B, device="cpu", params={"attack_steps": 0}, progress=lines.append)
    assert res.reports == [] and len(res.failures) == 1 and res.failures[0].startswith("acl (fp32): ")
    assert "attack_steps" in res.failures[0] and any("perf failed" in line for line in lines)
    with pytest.raises(ValueError, match="attack_steps"):
        perf_all(["acl"], batch_size=B, device="cpu", params={"attack_steps": 0}, keep_going=False)


def test_user_errors_are_acbench_errors():
    with pytest.raises(UnknownName, match="did you mean 'acl'"):
        perf_all(["acll"], device="cpu")
    with pytest.raises(UnknownName, match="unknown preset"):
        perf_report("acl", preset="smok", device="cpu")
    with pytest.raises(UnknownName, match="unknown backbone"):
        perf_report("acl", backbone="resnet1000", device="cpu")
    with pytest.raises(UnknownName, match="unknown precision"):
        perf_all(["acl"], precision="fp16", device="cpu")
    with pytest.raises(UnknownName, match="unknown clock"):
        perf_report("acl", clock="sundial", device="cpu")
    with pytest.raises(ConfigError, match="steps"):
        perf_report("acl", steps=0, device="cpu")
    with pytest.raises(ConfigError, match="batch size"):
        perf_report("acl", batch_size=1, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            perf_report("acl", device="cuda")


def test_perf_epochs_times_the_real_loop(tmp_path):
    r = time_epochs("acl", preset="quick", epochs=2, images=4 * B, batch_size=B, device="cpu")
    assert r["steps_per_epoch"] == 4 and r["batch_size"] == B and len(r["epoch_seconds"]) == 2
    assert r["recipe_epochs"] == PRESETS["quick"].pretrain_epochs and r["epoch_s"] == r["epoch_seconds"][-1] > 0
    assert r["projected_hours"] == pytest.approx(r["epoch_s"] * r["recipe_epochs"] / 3600)
    assert r["images_per_s"] == pytest.approx(4 * B / r["epoch_s"])
    text = render_epochs([r])
    assert "| acl" in text and "projected h" in text
    with pytest.raises(ConfigError, match="fewer than two steps"):
        time_epochs("acl", preset="smoke", epochs=1, images=B, batch_size=B, device="cpu")
    with pytest.raises(ConfigError, match="has 1 epochs; cannot time 2"):
        time_epochs("acl", preset="smoke", epochs=2, device="cpu")
    with pytest.raises(UnknownName, match="did you mean 'acl'"):
        time_epochs("acll", preset="smoke", device="cpu")
