"""Finetuning protocols: the RobustSSL table entry by entry (transcribed here independently of
benchmark.protocols, from V/utils.py:803-1002 and V/run_vanilla_tune.sh), the --mode ALL carry-over,
method families, flags, dual-BN AFF, and smoke finetunes under the robustssl protocol."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch.nn import functional as F

from benchmark import load_classifier
from benchmark.config import PRESETS
from benchmark.data import load_dataset
from benchmark.errors import ConfigError, UnknownName
from benchmark.finetune import load_encoder, run_finetune
from benchmark.io import CheckpointError
from benchmark.models import BackboneConfig, CheckpointMismatch, ResNet
from benchmark.pretrain import PretrainConfig, run_pretrain
from benchmark.protocols import (
    ASSIGNMENTS,
    FAMILIES,
    METHOD_FAMILY,
    PROTOCOL_DEVIATION,
    PROTOCOLS,
    RELEASE_DEFAULTS,
    ROBUSTSSL_DEVIATIONS,
    RUNS,
    NoProtocol,
    check_protocol,
    common_deviations,
    finetune_config,
    protocol_flags,
    release_config,
    robustssl_family,
)
from benchmark.schemes import FinetuneConfig, get_scheme
from benchmark.schemes.aff import AdversarialFull
from benchmark.schemes.dual_bn import DualBNClassifier, dual_bn_from_encoder, to_single_bn
from methods import list_methods, method_class
from tests.helpers import fake_extras

CPU = torch.device("cpu")
# the release's downstream cases: (pretraining, finetuning) dataset per column of the table
PAIRS = {
    "C10": ("cifar10", "cifar10"),
    "C100": ("cifar100", "cifar100"),
    "STL96": ("stl10", "stl10"),
    "STL32": ("cifar10", "stl10"),
}
COLUMNS = tuple(PAIRS)


def row(slf, alf, aff):
    """{scheme: {column: (batch, lr, milestones, epochs)}} from per-scheme 4-tuples of entries."""
    return {
        s: dict(zip(COLUMNS, entries)) for s, entries in zip(("slf", "alf", "aff"), (slf, alf, aff))
    }


M10, M15, M40 = (10, 20), (15, 20), (40, 60)
ACL_LINEAR = ((512, 0.01, M10, 25), (512, 0.05, M10, 25), (512, 0.1, M10, 25), (128, 0.01, M10, 25))
DYNACL_AFF = ((128, 0.1, M15, 25), (128, 0.1, M15, 25), (128, 0.1, M10, 25), (128, 0.1, M15, 25))
ADVCL = row(((512, 0.01, M15, 25),) * 4, ((512, 0.01, M15, 25),) * 4, ((128, 0.1, M15, 25),) * 4)
# WAVE2 section 6c, checked against V/utils.py at 19dc714
EXPECTED = {
    "ACL": row(ACL_LINEAR, ACL_LINEAR, ((128, 0.1, M40, 100),) * 4),
    "DynACL": row(ACL_LINEAR, ACL_LINEAR, DYNACL_AFF),
    "DynACL++": row(ACL_LINEAR, ACL_LINEAR, DYNACL_AFF),
    "AdvCL": ADVCL,
    "A-InfoNCE": ADVCL,
    "DeACL": ADVCL,
    "DynACL-AIR": row(
        ((512, 0.01, M10, 5), (512, 0.1, M10, 25), (512, 0.1, M10, 25), (128, 0.01, M10, 25)),
        ((512, 0.01, M10, 5), (512, 0.1, M10, 25), (128, 0.1, M10, 25), (128, 0.01, M10, 25)),
        ((128, 0.1, M15, 5), (128, 0.1, M15, 25), (128, 0.1, M15, 25), (128, 0.1, M15, 25)),
    ),
    "DynACL-AIR++": row(
        ((512, 0.01, M10, 25), (512, 0.09, M10, 25), (512, 0.1, M10, 25), (128, 0.1, M10, 25)),
        ((512, 0.01, M10, 4), (512, 0.1, M10, 25), (128, 0.1, M10, 25), (128, 0.1, M10, 25)),
        ((128, 0.1, M15, 4), (128, 0.1, M15, 25), (128, 0.1, M15, 25), (128, 0.1, M15, 25)),
    ),
    "DynACL-RCS": row(*(((128, 0.1, M15, 25),) * 4,) * 3),
}
# AFF's BN layout per run of V/run_vanilla_tune.sh: (family, pretrain, finetune) -> dual BN
DUAL = "DynACL DynACL++ DynACL-AIR DynACL-AIR++ DynACL-RCS".split()
EXPECTED_RUNS = {
    **{(f, "cifar10", "cifar10"): f in DUAL + ["ACL"] for f in FAMILIES},
    **{(f, "cifar100", "cifar100"): f in DUAL + ["ACL"] for f in FAMILIES if f != "DeACL"},
    **{(f, "stl10", "stl10"): True for f in DUAL + ["ACL"]},
    **{
        (f, "cifar10", "stl10"): False
        for f in ("ACL", "DynACL", "AdvCL", "A-InfoNCE", "DeACL", "DynACL-AIR", "DynACL-RCS")
    },
    **{
        (f, "cifar100", "stl10"): True
        for f in ("ACL", "DynACL", "AdvCL", "A-InfoNCE", "DynACL-AIR")
    },
}


# ---- the transcribed table ---------------------------------------------------------------------


def test_families_are_the_release_cli_choices():
    # V/vanilla_finetuning.py:61-62 ('ACL_IR' is not a choice, so its branch is unreachable)
    assert set(FAMILIES) == set(EXPECTED) == {
        "ACL", "AdvCL", "A-InfoNCE", "DeACL", "DynACL", "DynACL++", "DynACL-AIR", "DynACL-AIR++",
        "DynACL-RCS",
    }  # fmt: skip


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_every_table_entry(family):
    for scheme, columns in EXPECTED[family].items():
        for column, (batch, lr, milestones, epochs) in columns.items():
            pre, fine = PAIRS[column]
            cfg = release_config(family, scheme, pre, fine)
            got = (cfg.batch_size, cfg.lr, cfg.milestones, cfg.epochs)
            assert got == (batch, lr, milestones, epochs), (family, scheme, column)
            # fixed for every row: SGD momentum 0.9, wd 2e-4, PGD/TRADES-10 at 2/255, beta 6
            assert (cfg.momentum, cfg.weight_decay, cfg.trades_beta) == (0.9, 2e-4, 6.0)
            assert (cfg.attack_steps, cfg.attack_step, cfg.eps) == (10, 2 / 255, 8 / 255)
            assert cfg.scheme == scheme and cfg.selection == "last" and cfg.crop_padding == 4
            assert cfg.branch == ("" if family == "DeACL" else "pgd")
            if scheme != "aff":
                assert not cfg.dual_bn  # SLF/ALF always load single-BN (V/utils.py:464)
        # the CIFAR-100 -> STL-10 transfer takes the same (stl10, resize 32) branches
        for scheme in ("slf", "alf", "aff"):
            a = release_config(family, scheme, "cifar100", "stl10")
            b = release_config(family, scheme, "cifar10", "stl10")
            assert dataclasses.replace(a, dual_bn=False) == dataclasses.replace(b, dual_bn=False)


def test_aff_bn_layout_of_every_run():
    assert {k: dual for k, (_, dual) in RUNS.items()} == EXPECTED_RUNS
    lines = [line for line, _ in RUNS.values()]
    assert len(set(lines)) == len(lines) == 35  # one script line each
    for (family, pre, fine), dual in EXPECTED_RUNS.items():
        assert release_config(family, "aff", pre, fine).dual_bn == dual, (family, pre, fine)
    # runs the release never made follow its rule: single-BN checkpoints in-domain single
    assert not release_config("AdvCL", "aff", "stl10", "stl10").dual_bn
    assert release_config("AdvCL", "aff", "cifar100", "cifar10").dual_bn is False  # in-domain rule
    assert release_config("ACL", "aff", "cifar100", "stl10").dual_bn  # C100 -> STL: dual
    # DeACL never ran from CIFAR-100 and has one BN branch: single-BN AFF, never a dual one
    assert not release_config("DeACL", "aff", "cifar100", "stl10").dual_bn


def test_mode_all_carry_over():
    """Each scheme alone (argparse defaults + its own assignments) against --mode ALL: they
    differ only where a family's branch sets epochs that the next schemes inherit."""

    def alone(family, scheme, key):
        args = dict(RELEASE_DEFAULTS)
        for part in ("*", key):
            args.update(ASSIGNMENTS[family][scheme].get(part, {}))
        return args["batch_size"], args["lr"], tuple(args["milestones"]), args["epochs"]

    keys = {"C10": "cifar10", "C100": "cifar100", "STL96": "stl10-96", "STL32": "stl10-32"}
    carried = set()
    for family, schemes in EXPECTED.items():
        for scheme, columns in schemes.items():
            for column, entry in columns.items():
                if alone(family, scheme, keys[column]) != entry:
                    carried.add((family, scheme, column))
    assert carried == {
        ("DynACL-AIR", "alf", "C10"),  # SLF's epochs = 5 (V/utils.py:929)
        ("DynACL-AIR", "aff", "C10"),
        ("DynACL-AIR++", "aff", "C10"),  # ALF's epochs = 4 (:977)
    }
    # acbench's dynacl-air and dynacl-air++ get the carried-over epochs, as --mode ALL ran them
    for method, scheme, epochs in [
        ("dynacl-air", "slf", 5), ("dynacl-air", "alf", 5), ("dynacl-air", "aff", 5),
        ("dynacl-air++", "slf", 25), ("dynacl-air++", "alf", 4), ("dynacl-air++", "aff", 4),
    ]:  # fmt: skip
        assert finetune_config("robustssl", method, scheme, "cifar10", "cifar10").epochs == epochs
        assert finetune_config("robustssl", method, scheme, "cifar100", "cifar100").epochs == 25


# ---- methods, protocols, presets ---------------------------------------------------------------


# acbench method -> the release's --pretraining family, independently of METHOD_FAMILY (WAVE2
# sections 0.5 and 6). Names that helpers register later (dynacl++, dynacl-air++, dynacl-rcs) are
# checked by name whether or not they are registered yet.
FAMILY_OF = {
    "acl": "ACL", "advcl": "AdvCL", "advcl-ip": "A-InfoNCE", "advcl-hn": "A-InfoNCE",
    "advcl-iphn": "A-InfoNCE", "deacl": "DeACL", "dynacl": "DynACL", "dynacl++": "DynACL++",
    "dynacl-air": "DynACL-AIR", "dynacl-air++": "DynACL-AIR++", "dynacl-rcs": "DynACL-RCS",
}  # fmt: skip
# registered methods RobustSSL never finetuned (a one-line NoProtocol, with the reason)
NO_ROBUSTSSL = {"simclr", "rocl", "rocl-ip", "rocl-hn", "rocl-iphn", "acl-air", "acl-air++", "acl-rcs",
                "deacl-teacher"}


def test_method_families_and_branches():
    assert METHOD_FAMILY == FAMILY_OF
    assert set(METHOD_FAMILY.values()) == set(FAMILIES)  # every family has its acbench method
    for method, family in FAMILY_OF.items():
        assert robustssl_family(method) == family
    registered = set(list_methods())
    # every registered method either has RobustSSL settings or is one RobustSSL never evaluated
    assert registered <= set(FAMILY_OF) | NO_ROBUSTSSL, registered - set(FAMILY_OF) - NO_ROBUSTSSL
    for method in sorted(registered):
        if method in FAMILY_OF:
            cfg = finetune_config("robustssl", method, "slf", "cifar10", "cifar10")
            if method == "deacl":  # one BN: the checkpoint's own branch ("" = its finetune_branch)
                assert cfg.branch == "" and method_class(method).finetune_branch == "normal"
            else:  # the release finetunes bn_list.1 = 'pgd': acbench's methods name the same branch
                assert cfg.branch == method_class(method).finetune_branch == "pgd"
        else:
            with pytest.raises(NoProtocol, match=re.escape(f"method '{method}' has no robustssl protocol")):
                finetune_config("robustssl", method, "slf", "cifar10", "cifar10")
    with pytest.raises(NoProtocol, match="RobustSSL has no ACL-AIR checkpoint") as e:
        robustssl_family("acl-air")
    assert "\n" not in str(e.value) and "--protocol uniform" in str(e.value)
    with pytest.raises(NoProtocol, match="settings only for ACL, DynACL,"):
        robustssl_family("simclr")
    assert issubclass(NoProtocol, ConfigError)


def test_new_families_take_their_release_branches():
    """deacl: AdvCL's settings (V/utils.py:876-884), single-BN AFF; dynacl and dynacl++: the
    DynACL branch (:828-850); dynacl-rcs: the else branch (:997-1000), as the name mismatch ran it."""
    for scheme in ("slf", "alf"):
        deacl = finetune_config("robustssl", "deacl", scheme, "cifar10", "cifar10")
        assert (deacl.batch_size, deacl.lr, deacl.milestones, deacl.epochs) == (512, 0.01, M15, 25)
        for method in ("dynacl", "dynacl++"):
            c100 = finetune_config("robustssl", method, scheme, "cifar100", "cifar100")
            assert (c100.batch_size, c100.lr, c100.milestones) == (512, 0.05, M10)
        rcs = finetune_config("robustssl", "dynacl-rcs", scheme, "cifar10", "cifar10")
        assert (rcs.batch_size, rcs.lr, rcs.milestones, rcs.epochs) == (128, 0.1, M15, 25)
    assert not finetune_config("robustssl", "deacl", "aff", "cifar10", "cifar10").dual_bn
    assert not finetune_config("robustssl", "deacl", "aff", "cifar10", "stl10").dual_bn
    stl = finetune_config("robustssl", "dynacl", "aff", "stl10", "stl10")
    assert stl.milestones == M10 and stl.dual_bn
    for method in ("dynacl", "dynacl++", "dynacl-air", "dynacl-air++", "dynacl-rcs"):
        assert finetune_config("robustssl", method, "aff", "cifar10", "cifar10").dual_bn
    assert not finetune_config("robustssl", "dynacl-rcs", "aff", "cifar10", "stl10").dual_bn


def test_finetune_config_uniform_and_robustssl():
    assert PROTOCOLS == ("uniform", "robustssl") and check_protocol("robustssl") == "robustssl"
    with pytest.raises(
        UnknownName, match=r"unknown protocol 'robustsl' \(did you mean 'robustssl'\?\)"
    ):
        finetune_config("robustsl", "acl", "slf", "cifar10", "cifar10")
    for scheme in ("slf", "alf", "aff"):
        for ds in ("cifar10", "cifar100", "stl10", "digits"):
            uniform = finetune_config("uniform", "rocl", scheme, ds, ds)  # any method
            assert uniform == get_scheme(scheme).paper_config(ds)
            assert uniform.branch == "" and not uniform.dual_bn
    acl = finetune_config("robustssl", "acl", "aff", "cifar10", "cifar10", selection="val")
    assert (acl.epochs, acl.milestones, acl.dual_bn, acl.selection) == (100, (40, 60), True, "val")
    advcl = finetune_config("robustssl", "advcl-ip", "slf", "cifar100", "cifar100")
    assert (advcl.batch_size, advcl.lr, advcl.milestones) == (512, 0.01, (15, 20))
    # a dataset the release never ran (the CPU presets' digits) takes CIFAR-10's branch
    assert finetune_config("robustssl", "acl", "slf", "digits", "digits") == release_config(
        "ACL", "slf", "cifar10", "cifar10"
    )


def test_preset_overrides_scale_the_protocol():
    smoke = PRESETS["smoke"].finetune["aff"]
    cfg = finetune_config("robustssl", "acl", "aff", "digits", "digits", overrides=smoke)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.milestones) == (2, 32, 0.05, ())
    assert (cfg.attack_steps, cfg.attack_step) == (2, 4 / 255)
    assert cfg.dual_bn and cfg.branch == "pgd" and cfg.weight_decay == 2e-4  # the rest: protocol's
    uniform = finetune_config("uniform", "acl", "aff", "digits", "digits", overrides=smoke)
    assert uniform == dataclasses.replace(get_scheme("aff").paper_config("digits"), **smoke)
    with pytest.raises(
        UnknownName, match=r"unknown finetuning setting 'epoch' \(did you mean 'epochs'\?\)"
    ):
        finetune_config("uniform", "acl", "slf", "digits", "digits", overrides={"epoch": 3})
    with pytest.raises(ConfigError, match="has no dual-BN form"):
        finetune_config("uniform", "acl", "slf", "digits", "digits", overrides={"dual_bn": True})


def test_protocol_flags():
    assert protocol_flags("uniform", "rocl", "aff", "cifar10", "stl10", "val") == ()
    assert (
        common_deviations("uniform") == ()
        and common_deviations("robustssl") == ROBUSTSSL_DEVIATIONS
    )
    common = protocol_flags("robustssl", "acl", "aff", "cifar10", "cifar10")
    assert [f.message for f in common] == list(ROBUSTSSL_DEVIATIONS)
    assert {f.kind for f in common} == {PROTOCOL_DEVIATION}
    assert any("AutoAttack seed" in m for m in ROBUSTSSL_DEVIATIONS)
    assert any("strict checkpoint loading" in m for m in ROBUSTSSL_DEVIATIONS)

    def extra(*args):
        return [f.message for f in protocol_flags("robustssl", *args)][len(ROBUSTSSL_DEVIATIONS) :]

    assert extra("advcl", "aff", "cifar10", "stl10") == []  # single-BN AFF, as released
    (broken,) = extra("advcl-ip", "aff", "cifar100", "stl10")  # dual-BN AFF of a single-BN load
    assert broken.startswith("release left BN layers and shortcut convs at init")
    assert extra("advcl", "slf", "cifar100", "stl10") == []  # SLF/ALF load correctly
    (not_run,) = extra("acl", "slf", "digits", "digits")
    assert "not run by RobustSSL (ACL digits -> digits" in not_run and "cifar10 branch" in not_run
    assert "(AdvCL stl10 -> stl10 is not in" in extra("advcl", "alf", "stl10", "stl10")[0]
    (stem,) = extra("deacl", "slf", "cifar10", "cifar10")  # RobustSSL's evaluation ResNet quirk
    assert stem.startswith("release finetunes DeACL's padding-2 stem encoder in a padding-1 ResNet")
    assert extra("dynacl", "aff", "cifar10", "cifar10") == []
    (val,) = extra("acl", "alf", "cifar10", "cifar10", "val")
    assert val.startswith("val-split epoch selection") and "test set" in val
    with pytest.raises(NoProtocol):
        protocol_flags("robustssl", "simclr", "slf", "cifar10", "cifar10")


def test_plugin_scheme_has_no_robustssl_protocol():
    with pytest.raises(UnknownName, match="unknown scheme 'sfl'"):
        finetune_config("robustssl", "acl", "sfl", "cifar10", "cifar10")
    from benchmark.schemes import SCHEMES
    from benchmark.schemes.slf import StandardLinear

    SCHEMES.register("lf-test")(StandardLinear)
    try:
        assert finetune_config("uniform", "acl", "lf-test", "cifar10", "cifar10").lr == 0.01
        with pytest.raises(NoProtocol, match="scheme 'lf-test' has no robustssl protocol"):
            finetune_config("robustssl", "acl", "lf-test", "cifar10", "cifar10")
    finally:
        SCHEMES.unregister("lf-test")


# ---- dual-BN AFF -------------------------------------------------------------------------------


def _encoder(branches=("normal", "pgd"), seed=0) -> ResNet:
    torch.manual_seed(seed)
    enc = ResNet(BackboneConfig("resnet10-tiny"), branches=branches)
    for m in enc.modules():  # distinct, non-trivial BN parameters and statistics per branch
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.data.normal_(0, 0.1)
            m.weight.data += 1
            m.running_var.data.uniform_(0.5, 1.5)
    return enc


def test_dual_bn_aff_trains_both_branches_and_converts_to_pgd():
    enc = _encoder(("normal", "pgd", "pgd_ce"))  # AdvCL's branches: 'pgd_ce' is dropped
    model = dual_bn_from_encoder(enc, "pgd", 10)
    assert isinstance(model, DualBNClassifier) and model.encoder.branches == ("normal", "pgd")
    assert not any(".pgd_ce." in k for k in model.state_dict())
    for name, value in enc.state_dict().items():  # both branches start from the encoder's own
        if ".pgd_ce." not in name:
            assert torch.equal(model.encoder.state_dict()[name], value), name
    torch.nn.init.normal_(model.fc.weight, std=0.1)  # a zero head gives the encoder no gradient
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = dataclasses.replace(
        finetune_config("robustssl", "acl", "aff", "cifar10", "cifar10"), attack_steps=2
    )
    assert cfg.dual_bn
    torch.manual_seed(1)
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    loss = AdversarialFull("aff", "AFF", 2).loss(model, x, y, cfg)
    assert model.training and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    bn = model.encoder.bn1.bn
    for branch in ("normal", "pgd"):  # CE trains 'normal', the KL term both; stats move in both
        assert bn[branch].weight.grad is not None and bn[branch].weight.grad.abs().sum() > 0
        key = f"bn1.bn.{branch}.running_mean"
        assert not torch.equal(model.encoder.state_dict()[key], before[f"encoder.{key}"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()

    # the loss is TRADES with clean logits through 'normal' and adversarial ones through 'pgd'
    torch.manual_seed(2)
    model.eval()
    with torch.no_grad():
        clean, adv = model(x, "normal"), model(x, "pgd")
    assert not torch.allclose(clean, adv)

    clf = to_single_bn(model)
    assert set(clf.state_dict()) == set(load_classifier_keys())
    clf.eval()
    with torch.no_grad():
        assert torch.equal(clf(x), model(x)) and torch.equal(clf(x), adv)  # the pgd branch
    for k, v in clf.encoder.state_dict().items():
        src = k.replace(".bn.", ".bn.pgd.") if ".bn." in k else k
        assert torch.equal(v, model.encoder.state_dict()[src]), k


def load_classifier_keys():
    from benchmark.models import Classifier

    return Classifier(BackboneConfig("resnet10-tiny"), 10).state_dict().keys()


def test_dual_bn_loss_matches_the_release_formula():
    """CE(f_normal(x)) + 6 * KL(softmax f_normal(x) || softmax f_pgd(x_adv)) / B, in train mode."""
    model = dual_bn_from_encoder(_encoder(), "pgd", 10)
    torch.nn.init.normal_(model.fc.weight, std=0.1)
    cfg = dataclasses.replace(
        finetune_config("robustssl", "acl", "aff", "cifar10", "cifar10"), attack_steps=1
    )
    x, y = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    loss = AdversarialFull("aff", "AFF", 2).loss(model, x, y, cfg)
    # re-derive: the attack's one step, then the loss from the same starting BN state
    model.load_state_dict(state)
    torch.manual_seed(3)
    model.eval()
    p_nat = F.softmax(model(x, "normal"), dim=1).detach()
    x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    kl = F.kl_div(F.log_softmax(model(x_adv, "pgd"), dim=1), p_nat, reduction="sum")
    (g,) = torch.autograd.grad(kl, x_adv)
    x_adv = torch.min(torch.max(x_adv.detach() + 2 / 255 * g.sign(), x - 8 / 255), x + 8 / 255)
    x_adv = x_adv.clamp(0, 1)
    model.train()
    nat = model(x, "normal")
    adv = model(x_adv, "pgd")
    ref = F.cross_entropy(nat, y) + 6.0 / 4 * F.kl_div(
        F.log_softmax(adv, dim=1), F.softmax(nat, dim=1), reduction="sum"
    )
    assert torch.allclose(loss, ref, atol=1e-6)


def test_dual_bn_needs_both_branches():
    with pytest.raises(CheckpointMismatch, match="needs BN branches 'normal' and 'pgd'"):
        dual_bn_from_encoder(_encoder(("normal",)), "pgd", 10)
    with pytest.raises(CheckpointMismatch, match="both are 'normal'"):
        dual_bn_from_encoder(_encoder(), "normal", 10)
    with pytest.raises(ConfigError, match="scheme 'alf' has no dual-BN form"):
        FinetuneConfig("alf", epochs=1, batch_size=8, lr=0.1, milestones=(), dual_bn=True)


# ---- smoke finetunes under robustssl -----------------------------------------------------------


def _pretrain(tmp_path_factory, method: str):
    d = tmp_path_factory.mktemp(f"pre-{method}")
    from methods import get_method

    preset = PRESETS["smoke"]
    recipe = preset.recipe(get_method(method).paper_recipe())
    cfg = PretrainConfig(method, {}, "digits", 16, "resnet10-tiny", 0, recipe, train_limit=128)
    extras = fake_extras(method_class(method), 128)
    run_pretrain(cfg, load_dataset("digits"), d, CPU, extras=extras, progress=False)
    return d / "encoder.pt"


@pytest.fixture(scope="module")
def acl_encoder(tmp_path_factory):
    return _pretrain(tmp_path_factory, "acl")


@pytest.fixture(scope="module")
def advcl_encoder(tmp_path_factory):
    return _pretrain(tmp_path_factory, "advcl")


def _smoke(method, scheme, encoder_path, out, **change):
    overrides = PRESETS["smoke"].finetune[scheme]
    cfg = finetune_config("robustssl", method, scheme, "digits", "digits", overrides=overrides)
    cfg = dataclasses.replace(cfg, **change)
    info = run_finetune(encoder_path, cfg, load_dataset("digits"), out, CPU, seed=0, train_limit=128,
                        progress=False)  # fmt: skip
    return cfg, info, load_classifier(out / "classifier.pt")


def _pgd_branch(encoder_path):
    enc, _ = load_encoder(encoder_path)
    return {
        k.replace(".bn.pgd.", ".bn."): v
        for k, v in enc.state_dict().items()
        if ".bn.pgd." in k or ".bn." not in k
    }


def test_robustssl_smoke_acl_dual_bn_aff(tmp_path, acl_encoder):
    cfg, info, clf = _smoke("acl", "aff", acl_encoder, tmp_path)
    assert cfg.dual_bn and cfg.branch == "pgd" and info["encoder_branch"] == "pgd"
    assert [h["epoch"] for h in info["history"]] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in info["history"])
    ck = torch.load(tmp_path / "classifier.pt", weights_only=True)
    assert ck["config"]["dual_bn"] is True and ck["config"]["epochs"] == 2
    assert not any(".normal." in k or ".pgd." in k for k in ck["state_dict"])  # single BN
    pgd = _pgd_branch(acl_encoder)
    assert not all(torch.equal(clf.encoder.state_dict()[k], v) for k, v in pgd.items())  # trained
    assert torch.count_nonzero(clf.fc.weight) > 0
    x = load_dataset("digits").test_x[:4].float() / 255
    assert clf(x).shape == (4, 10)


def test_robustssl_smoke_advcl(tmp_path, advcl_encoder):
    cfg, info, clf = _smoke("advcl", "alf", advcl_encoder, tmp_path / "alf")
    assert (cfg.milestones, cfg.branch, cfg.dual_bn) == ((), "pgd", False)
    pgd = _pgd_branch(advcl_encoder)
    assert all(torch.equal(clf.encoder.state_dict()[k], v) for k, v in pgd.items())  # frozen
    assert torch.count_nonzero(clf.fc.weight) > 0
    # AdvCL's three branches under dual-BN AFF (the release's C100 -> STL layout): 'pgd_ce' dropped
    cfg, info, clf = _smoke("advcl", "aff", advcl_encoder, tmp_path / "aff", dual_bn=True, epochs=1)
    assert info["encoder_branch"] == "pgd" and torch.count_nonzero(clf.fc.weight) > 0


def test_robustssl_branch_must_exist(tmp_path, acl_encoder):
    overrides = PRESETS["smoke"].finetune["slf"]
    cfg = dataclasses.replace(
        finetune_config("robustssl", "acl", "slf", "digits", "digits", overrides=overrides),
        branch="pgd_ce",
    )
    with pytest.raises(CheckpointError, match="no BN branch named 'pgd_ce'"):
        run_finetune(acl_encoder, cfg, load_dataset("digits"), tmp_path, CPU, seed=0, train_limit=128,
                     progress=False)  # fmt: skip


def test_transfer_to_another_class_count_trains_a_new_head(tmp_path, acl_encoder):
    """A transfer finetunes a new zero-initialised head sized for the target's classes, as
    RobustSSL's CIFAR-100 (100 classes) -> STL-10 (10) runs do: a different class count is no
    error (nothing class-shaped crosses from pretraining to finetuning)."""
    from benchmark.data import make_synthetic

    five = make_synthetic(n_train=96, n_val=32, n_test=32, num_classes=5, image_size=16)
    for protocol, pair in (("uniform", ("digits", "synthetic")), ("robustssl", ("cifar100", "stl10"))):
        cfg = finetune_config(protocol, "acl", "slf", *pair, overrides=PRESETS["smoke"].finetune["slf"])
        out = tmp_path / protocol
        run_finetune(acl_encoder, cfg, five, out, CPU, seed=0, train_limit=96, progress=False)
        clf = load_classifier(out / "classifier.pt")
        assert clf.fc.out_features == 5 and torch.count_nonzero(clf.fc.weight) > 0
        assert clf(five.test_x[:4].float() / 255).shape == (4, 5)
