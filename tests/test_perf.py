"""acbench perf: pass counts per pretraining step (hardware independent), attacks without weight
gradients, the reference steps against the methods, and the command."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import methods.acl
import methods.advcl
import methods.rocl
from benchmark.cli import main
from benchmark.perf import (
    KEYS,
    FlopCounter,
    PassCounter,
    PerfBench,
    forward_equivalents,
    perf_report,
)

B = 4  # images per batch: small and fast; the counts are per image


def _bench(method: str, **params) -> PerfBench:
    return PerfBench(method, "smoke", batch_size=B, device="cpu", params=params)


# Per image, K attack steps (METHODS.md section 2):
#   ACL:   attack 2K view forwards + 2K input-only backwards; loss 4 views (2 clean, 2 adv) fwd + bwd
#   RoCL:  1 no-grad target forward; attack K forwards + K input-only backwards; loss 3 views
#   AdvCL: 3 no-grad clean forwards (t1, t2, HFC); attack 2K (x_cl, x_ce) forwards + 2K input-only
#          backwards; loss 5 (x_cl, t1, t2, HFC, x_ce); adaptive IP variants: + 2 no-grad d_t forwards
#   SimCLR: 2 views forward + backward
def _formula(method: str, k: int) -> dict[str, float]:
    if method == "acl":
        return {"forward": 2 * k + 4, "input_backward": 2 * k, "weight_backward": 4}
    if method.startswith("rocl"):
        return {"forward": 1 + k + 3, "input_backward": k, "weight_backward": 3}
    if method.startswith("advcl"):
        adaptive = 2 if method in ("advcl-ip", "advcl-iphn") else 0
        return {"forward": 3 + 2 * k + 5 + adaptive, "input_backward": 2 * k, "weight_backward": 5}
    assert method == "simclr"
    return {"forward": 2, "input_backward": 0, "weight_backward": 2}


@pytest.mark.parametrize(
    "method,k,expected",
    [
        ("acl", 5, 32),  # 4K + 12
        ("acl", 2, 20),
        ("rocl", 7, 24),  # 2K + 10
        ("rocl-iphn", 3, 16),
        ("advcl", 5, 38),  # 4K + 18 (the released code recomputes the clean views: about 50)
        ("advcl-ip", 5, 40),  # 4K + 20
        ("advcl-hn", 2, 26),
        ("simclr", 0, 6),
    ],
)
def test_passes_per_step_match_the_formula(method, k, expected):
    bench = _bench(method, **({"attack_steps": k} if k else {}))
    assert bench.attack_steps == k
    _, passes = bench.count(bench.harness_step)
    assert passes == _formula(method, k)
    assert forward_equivalents(passes) == expected
    _, ref_passes = bench.count(bench.reference_step)  # the reference does the same passes
    assert ref_passes == passes


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
        passes, flops = PassCounter(bench.model.encoder.conv1.weight.shape), FlopCounter()
        with passes, flops:
            out = original(loss_fn, inputs, *args, **kwargs)
        seen.append((passes, flops.get_flop_counts()["Global"]))
        assert all(p.grad is None for p in bench.model.parameters())  # nothing accumulated
        return out

    monkeypatch.setattr(module, "contrastive_pgd", spy)
    bench.harness_step()  # the first step: no gradients exist before it
    (passes, ops), = seen
    assert passes.weight_backward == 0  # the stem's backward never computes its weight gradient
    assert passes.input_backward == passes.forward == 2 * views * B
    # FlopCounterMode: an input-only backward costs one forward (the weight half is not computed)
    conv = {str(op): v for op, v in ops.items()}
    assert conv["aten.convolution_backward"] == pytest.approx(conv["aten.convolution"], rel=0.02)


@pytest.mark.parametrize("method", ["simclr", "acl", "rocl", "rocl-ip", "advcl", "advcl-iphn"])
def test_reference_step_is_the_methods_step(method):
    """Same seed and weights: the plain torch step gives the harness's loss and update."""
    params = {} if method == "simclr" else {"attack_steps": 2}
    harness, reference = _bench(method, **params), _bench(method, **params)
    torch.manual_seed(1)
    harness.harness_step()
    torch.manual_seed(1)
    ref_loss = reference.reference_step()
    assert float(ref_loss) == pytest.approx(float(harness.log.losses[0]), rel=1e-5)
    for a, b in zip(harness.model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_perf_report_keys():
    r = perf_report("rocl", "smoke", batch_size=B, steps=1, warmup=0, device="cpu")
    assert set(KEYS) <= set(r)
    assert r["attack_steps"] == 7 and r["ratio"] > 0 and r["peak_memory_mb"] > 0
    assert r["passes_per_image"] == r["reference_passes_per_image"] == _formula("rocl", 7)


def test_cli_perf_json():
    r = CliRunner().invoke(main, ["perf", "--method", "acl", "--preset", "smoke", "--steps", "2", "--json"])
    assert r.exit_code == 0, r.output
    (report,) = json.loads(r.stdout)
    assert set(KEYS) <= set(report)
    assert report["method"] == "acl" and report["forward_equivalents_per_image"] == pytest.approx(32, rel=0.03)


def test_cli_perf_markdown_and_errors(tmp_path):
    out = tmp_path / "perf" / "cpu.md"
    r = CliRunner().invoke(main, ["perf", "--method", "simclr", "--batch-size", "4", "--steps", "1",
                                  "--warmup", "0", "--clock", "cpu", "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "| method" in text and "simclr" in text and "harness img/s" in text and "cpu clock" in text
    r = CliRunner().invoke(main, ["perf"])
    assert r.exit_code != 0 and "--method" in r.output
    r = CliRunner().invoke(main, ["perf", "--method", "acll"])
    assert r.exit_code == 1 and "did you mean 'acl'" in r.output and "Traceback" not in r.output
