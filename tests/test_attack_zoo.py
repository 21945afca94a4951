"""torchattacks through ``ta:`` specs, attack settings in records, and a plugin attack."""

import inspect
import json
import sys
import textwrap

import pytest
import torch
from torch import nn

from attacks import (
    ATTACKS,
    attack_label,
    attack_names,
    attack_settings,
    check_attack_spec,
    eval_options,
    get_attack,
)
from attacks.zoo import torchattacks_classes
from benchmark import evaluate
from benchmark.config import EvalConfig
from benchmark.errors import AcbenchError, ConfigError, UnknownName
from benchmark.evaluate import evaluate_classifier
from tests.helpers import accuracy, trained_classifier

torchattacks = pytest.importorskip("torchattacks")
EPS = 8 / 255


@pytest.fixture(scope="module")
def tiny():
    """A small ResNet trained normally on 16x16 digits: accurate, not robust."""
    return trained_classifier(16, 4, 64)


acc = accuracy


def percent(model, x, y, bs):
    """Accuracy as evaluation counts it: batches of ``bs``, 100 * correct / n."""
    with torch.no_grad():
        correct = sum((model(x[i : i + bs]).argmax(1) == y[i : i + bs]).sum().item() for i in range(0, len(x), bs))
    return round(100.0 * correct / len(x), 4)


def run(spec, model, x, y, **overrides):
    return get_attack(spec, **overrides)(model, x, y)


def test_fgsm_linf_budget_from_the_eval_config(tiny):
    model, x, y = tiny
    cfg = EvalConfig(eps=4 / 255, seed=0)
    x_adv = run("ta:FGSM", model, x, y, **eval_options("ta:FGSM", cfg))
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6
    assert (x_adv - x).abs().max() >= 4 / 255 - 1e-6  # FGSM steps to the boundary
    assert acc(model, x_adv, y) < acc(model, x, y)
    assert attack_settings("ta:FGSM", **eval_options("ta:FGSM", cfg))["arguments"] == {"eps": 4 / 255}


def test_pgdl2_stays_in_its_l2_ball(tiny):
    model, x, y = tiny
    for spec, eps in (("ta:PGDL2", 1.0), ("ta:PGDL2:eps=0.5:steps=20", 0.5)):  # torchattacks' default 1.0
        x_adv = run(spec, model, x, y)
        norms = (x_adv - x).flatten(1).norm(dim=1)
        assert norms.max() <= eps + 1e-4
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert acc(model, x_adv, y) < acc(model, x, y)
    s = attack_settings("ta:PGDL2:eps=0.5:steps=20")
    assert (s["eps"], s["threat_model"], s["arguments"]["steps"], s["arguments"]["alpha"]) == (0.5, "L2", 20, 0.2)
    assert attack_label("ta:PGDL2:eps=0.5:steps=20") == "PGDL2 (eps=0.5, steps=20)"


def test_cw_returns_valid_images_and_does_not_help(tiny):
    model, x, y = tiny
    x_adv = run("ta:CW:steps=5", model, x, y)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert acc(model, x_adv, y) <= acc(model, x, y)
    s = attack_settings("ta:CW:steps=5")
    assert s["threat_model"] == "L2" and s["eps"] is None  # minimal-perturbation attack, no budget
    assert s["arguments"] == {"c": 1, "kappa": 0, "steps": 5, "lr": 0.01}
    assert attack_label("ta:CW") == "CW"


def test_seeded_deterministic_eval_mode_and_rng_untouched(tiny):
    model, x, y = tiny
    model.train()
    state = torch.get_rng_state()
    a = run("ta:PGD:steps=3", model, x[:16], y[:16])
    assert model.training  # mode restored
    assert torch.equal(torch.get_rng_state(), state)  # global generator restored after the call
    model.eval()
    torch.manual_seed(123)  # whatever the caller's generator state, the attack draws the same start
    b = run("ta:PGD:steps=3", model, x[:16], y[:16])
    assert torch.equal(a, b)
    c = run("ta:PGD:steps=3:seed=1", model, x[:16], y[:16])
    assert not torch.equal(a, c)
    # a class with its own seed argument gets ours (torchattacks' AutoAttack defaults to the clock)
    assert attack_settings("ta:AutoAttack")["arguments"]["seed"] == 0
    assert attack_settings("ta:Square", seed=5)["arguments"]["seed"] == 5


def test_same_result_as_torchattacks_itself(tiny):
    """The wrapper only seeds, sets eval mode and freezes weights: torchattacks' own numbers."""
    model, x, y = tiny
    x, y = x[:16], y[:16]
    torch.manual_seed(0)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=3)(x, y)
    assert torch.equal(run("ta:PGD:steps=3", model, x, y), theirs)
    theirs = torchattacks.FAB(model, eps=EPS, steps=3, seed=0)(x, y)  # FAB calls backward()
    ours = run("ta:FAB:steps=3", model, x, y)
    assert torch.equal(ours, theirs)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen after the attack
    model.zero_grad(set_to_none=True)
    run("ta:FAB:steps=3", model, x, y)
    assert all(p.grad is None for p in model.parameters())  # no weight gradients computed


@pytest.mark.parametrize("spec", ["ta:FGSM", "ta:PGD", "ta:PGDL2", "ta:CW", "ta:APGDT", "ta:Square",
                                  "ta:DeepFool", "ta:AutoAttack", "ta:APGD:norm=L2:eps=0.5", "ta:Pixle"])
def test_settings_complete_and_json(spec):
    s = attack_settings(spec)
    assert json.loads(json.dumps(s)) == s
    name = check_attack_spec(spec).split(":")[1]
    params = list(inspect.signature(getattr(torchattacks, name).__init__).parameters)[2:]
    assert list(s["arguments"]) == params  # every constructor argument, defaults included
    assert s["class"] == f"torchattacks.{name}" and s["seed"] == 0 and s["spec"] == spec
    assert s["threat_model"] in ("Linf", "L2", "L0")
    assert s["torchattacks"] == torchattacks.__version__
    if s["threat_model"] == "Linf":
        assert s["eps"] == EPS


def test_threat_models():
    expected = {"ta:FGSM": "Linf", "ta:APGDT": "Linf", "ta:PGDL2": "L2", "ta:CW": "L2", "ta:DeepFool": "L2",
                "ta:APGD:norm=L2:eps=0.5": "L2", "ta:Square:norm=L2:eps=0.5": "L2", "ta:GN": None}
    assert {s: attack_settings(s)["threat_model"] for s in expected} == expected
    assert "MultiAttack" not in torchattacks_classes() and "LGV" not in torchattacks_classes()


def test_bad_specs_name_the_problem():
    cases = [
        ("ta:PDG", UnknownName, r"unknown torchattacks attack 'PDG' \(did you mean 'PGD'\?\)"),
        ("ta:PGD:epss=0.1", UnknownName, r"unknown ta:PGD option 'epss' \(did you mean 'eps'\?\)"),
        ("ta:PGD:steps=many", ConfigError, r"ta:PGD option steps='many': expected int"),
        ("ta:PGD:random_start=1", ConfigError, r"ta:PGD option random_start=1: expected bool"),
        ("ta", ConfigError, r"ta needs a torchattacks class: ta:NAME"),
        ("ta:eps=0.1", ConfigError, r"ta needs a torchattacks class"),
        ("ta:PGD:steps", ConfigError, r"'steps' is not key=value"),
        ("ta:PGD:steps=2:steps=3", ConfigError, r"option 'steps' given twice"),
        ("ta:APGD:norm=L2", ConfigError, r"needs an explicit eps"),
        ("pgd20:steps=50", ConfigError, r"takes no options in a spec"),
        ("pgd2O", UnknownName, r"unknown attack 'pgd2O' \(did you mean 'pgd20'\?\).*ta:<NAME>"),
        ("", ConfigError, r"non-empty"),
    ]
    for spec, kind, message in cases:
        with pytest.raises(kind, match=message) as e:
            check_attack_spec(spec)
        assert isinstance(e.value, AcbenchError) and "\n" not in str(e.value)
        assert attack_label(spec) == spec  # labels never raise


def test_spec_values_and_canonical_form():
    assert check_attack_spec("ta:pgdl2:eps=0.5:steps=20") == "ta:PGDL2:eps=0.5:steps=20"
    s = attack_settings("ta:PGD:eps=4/255:steps=5:random_start=false")
    assert s["arguments"] == {"eps": 4 / 255, "alpha": 2 / 255, "steps": 5, "random_start": False}
    assert attack_settings("ta:CW:c=0.5")["arguments"]["c"] == 0.5  # int default, real value
    assert attack_settings("ta:PGDL2:eps=2")["arguments"]["eps"] == 2.0  # int for a float argument
    assert attack_label("ta:AutoAttack") == "torchattacks AutoAttack"  # not the protocol's AutoAttack
    # written options win over keyword overrides (the evaluation config's defaults)
    assert attack_settings("ta:FGSM:eps=0.1", default_eps=0.2)["eps"] == 0.1


def test_evaluate_records_metrics_settings_and_flags(tiny):
    model, x, y = tiny
    cfg = EvalConfig(batch_size=24, seed=0)
    specs = ["clean", "pgd20", "ta:FGSM", "ta:PGDL2:eps=0.5"]
    r = evaluate_classifier(model, x, y, specs, cfg, progress=False)
    assert set(r) == {"metrics", "warnings", "flags", "attacks", "seconds"}
    assert list(r["metrics"]) == specs and list(r["attacks"]) == specs
    assert json.loads(json.dumps(r["attacks"])) == r["attacks"]
    assert r["attacks"]["ta:FGSM"] == attack_settings("ta:FGSM", **eval_options("ta:FGSM", cfg))
    assert r["metrics"]["clean"] == percent(model, x, y, 24)
    assert r["metrics"]["ta:FGSM"] < r["metrics"]["clean"]
    # the record's number is exactly what the callable gives, batch by batch
    pgd = get_attack("pgd20", eps=cfg.eps, seed=cfg.seed)
    x_adv = torch.cat([pgd(model, x[i : i + 24], y[i : i + 24]) for i in range(0, len(x), 24)])
    assert r["metrics"]["pgd20"] == percent(model, x_adv, y, 24)
    assert r["flags"] == []  # pgd20 <= clean holds
    r = evaluate_classifier(model, x[:8], y[:8], ["CLEAN", "ta:fgsm", "ta:FGSM"], cfg, progress=False)
    assert list(r["metrics"]) == ["clean", "ta:FGSM"]  # canonical keys, each attack once
    with pytest.raises(UnknownName, match="did you mean 'PGD'"):
        evaluate_classifier(model, x, y, ["clean", "ta:PDG"], cfg, progress=False)  # before any attack


def test_evaluate_flags_broken_invariants_and_attack_warnings(monkeypatch):
    fake = {"clean": (50.0, []), "pgd20": (60.0, []), "autoattack": (40.0, ["it seems to be a randomized defense!"])}
    monkeypatch.setattr(evaluate, "robust_accuracy", lambda model, x, y, spec, cfg: fake[spec])
    r = evaluate_classifier(nn.Identity(), torch.zeros(2, 3, 4, 4), torch.zeros(2), list(fake), EvalConfig(),
                            progress=False)
    assert r["metrics"] == {"clean": 50.0, "pgd20": 60.0, "autoattack": 40.0}
    assert r["warnings"] == ["autoattack: it seems to be a randomized defense!"]
    assert r["flags"] == [
        {"kind": "invariant", "message": "pgd20 60.00 > clean 50.00"},
        {"kind": "autoattack-warning", "message": "autoattack: it seems to be a randomized defense!"},
    ]


PLUGIN = '''
"""A plugin attack: one signed-gradient step to the L-inf boundary (FGSM), in one file."""
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from attacks import ATTACKS, check_images, eval_mode


@dataclass(frozen=True)
class OneStep:
    eps: float = 8 / 255

    def __call__(self, model, x, y):
        check_images(x)
        x = x.detach().clone().requires_grad_(True)
        with eval_mode(model):
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        return (x + self.eps * grad.sign()).clamp(0, 1).detach()


@ATTACKS.register("one-step-test", label="FGSM (plugin)", threat_model="Linf",
                  eval_options=lambda cfg: {"eps": cfg.eps})
def one_step(**options):
    return OneStep(**options)
'''


def test_plugin_attack_needs_no_other_edit(tiny, tmp_path, monkeypatch):
    model, x, y = tiny
    (tmp_path / "acbench_test_attack_plugin.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownName):
        get_attack("one-step-test")
    ATTACKS.load_plugin("acbench_test_attack_plugin")
    try:
        assert "one-step-test" in attack_names() and attack_label("one-step-test") == "FGSM (plugin)"
        cfg = EvalConfig(eps=4 / 255, batch_size=32)
        r = evaluate_classifier(model, x, y, ["clean", "one-step-test"], cfg, progress=False)
        assert r["attacks"]["one-step-test"] == {"spec": "one-step-test", "label": "FGSM (plugin)",
                                                 "threat_model": "Linf", "eps": 4 / 255}
        assert r["metrics"]["one-step-test"] < r["metrics"]["clean"]
        attack = get_attack("one-step-test", eps=4 / 255)
        x_adv = torch.cat([attack(model, x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)])
        assert r["metrics"]["one-step-test"] == percent(model, x_adv, y, 32)
    finally:
        ATTACKS.unregister("one-step-test")
        sys.modules.pop("acbench_test_attack_plugin", None)
    with pytest.raises(AcbenchError, match="cannot import plugin module"):
        ATTACKS.load_plugin("acbench_no_such_plugin")


def test_registering_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        ATTACKS.register("pgd20", label="x")(lambda **kw: None)
    with pytest.raises(TypeError, match="callable"):
        ATTACKS.register("not-callable-test", label="x")(42)
    assert "not-callable-test" not in ATTACKS
