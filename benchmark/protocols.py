"""Finetuning protocols: which recipe turns a pretrained encoder into the evaluated classifier.

- ``uniform`` (default): one recipe per scheme for every method (``Scheme.paper_config``), the
  fair comparison.
- ``robustssl``: what the RobustSSL benchmark's vanilla finetuning ran for its published numbers
  (GodXuxilie/RobustSSL_Benchmark @19dc714, ``Finetuning_Methods/Vanilla_Finetuning``: ``V/``
  below), per method family, scheme and dataset: batch, learning rate, milestones, epochs,
  optimiser, attack, TRADES beta, dual- or single-BN AFF and the BN branch, including what its
  ``--mode ALL`` runs carry from one scheme into the next. acbench differs from the release only
  where the release is not reproducible or not sound; :func:`protocol_flags` lists where.

The release's table is transcribed below as data (file and line in comments) and replayed by
:func:`release_config`. Families are the release's ``--pretraining`` names; acbench methods map to
them in :data:`METHOD_FAMILY`. Methods the release has no recipe for (SimCLR, the RoCL family,
ACL-AIR, DeACL's teacher; :data:`NO_FAMILY` says why for some) have no ``robustssl`` protocol:
:class:`NoProtocol`. Downstream datasets are keyed as the
release's branches are: ``cifar10``, ``cifar100``, ``stl10-96`` (STL-10 -> STL-10, ``--resize
96``) and ``stl10-32`` (CIFAR -> STL-10, ``--resize 32``); any other dataset (the CPU presets'
digits) takes CIFAR-10's settings, flagged. Presets scale a protocol with per-scheme
``overrides`` (epochs, batch, lr, milestones, attack steps) applied on top of its settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from benchmark.errors import ConfigError, check_choice, unknown
from benchmark.records import Flag
from benchmark.schemes import FinetuneConfig, get_scheme

UNIFORM = "uniform"
ROBUSTSSL = "robustssl"
PROTOCOLS = (UNIFORM, ROBUSTSSL)
DEFAULT_PROTOCOL = UNIFORM
# flag kind: where a run differs from what its protocol reproduces
PROTOCOL_DEVIATION = "protocol-deviation"

RELEASE = "GodXuxilie/RobustSSL_Benchmark@19dc714"
# --mode ALL runs the schemes in this order, in one process (V/vanilla_finetuning.py:150-263)
SCHEME_ORDER = ("slf", "alf", "aff")

# V/vanilla_finetuning.py argparse defaults: --batch-size 128 (:29), --epochs 25 (:34), --wd 2e-4
# (:36), --lr 0.1 (:38), --momentum 0.9 (:40), --decreasing_lr 15,20 (:42), --epsilon 8/255 (:45),
# --step-size 2/255 (:47), --num-steps-train 10 (:49). setup_hyperparameter changes only batch,
# lr, milestones and epochs; the optimiser is SGD + MultiStepLR x0.1 (V/utils.py:505-509).
RELEASE_DEFAULTS: dict[str, Any] = {
    "batch_size": 128,
    "epochs": 25,
    "lr": 0.1,
    "milestones": (15, 20),
    "momentum": 0.9,
    "weight_decay": 2e-4,
    "eps": 8 / 255,
    "attack_step": 2 / 255,
    "attack_steps": 10,
}
TRADES_BETA = 6.0  # LAMBDA2 = 6 in trades_loss and trades_loss_dual (V/utils.py:596,637)

ALL = "*"  # assigned whatever the dataset
DATASET_KEYS = ("cifar10", "cifar100", "stl10-96", "stl10-32")

# setup_hyperparameter (V/utils.py:803-1002): per family and scheme, what each branch assigns.
# Under "*" what is assigned for every dataset (applied first), then the dataset's branch.
_ACL_LINEAR = {  # V/utils.py:806-819
    ALL: {"milestones": (10, 20)},  # :819
    "cifar10": {"batch_size": 512, "lr": 0.01},  # :807-809
    "cifar100": {"batch_size": 512, "lr": 0.05},  # :810-812
    "stl10-96": {"batch_size": 512, "lr": 0.1},  # :813-815
    "stl10-32": {"batch_size": 128, "lr": 0.01},  # :816-818
}
_DYNACL_LINEAR = _ACL_LINEAR  # V/utils.py:829-842, the same assignments
_ADVCL = {  # AdvCL :854-862, A-InfoNCE :865-873, DeACL :876-884: identical
    "slf": {ALL: {"milestones": (15, 20), "batch_size": 512, "lr": 0.01}},
    "alf": {ALL: {"milestones": (15, 20), "batch_size": 512, "lr": 0.01}},
    "aff": {ALL: {"batch_size": 128, "milestones": (15, 20), "lr": 0.1}},
}
_DYNACL = {  # V/utils.py:828-850 ('DynACL', 'DynACL++'; its 'DynACL_RCS' never matches, see below)
    "slf": _DYNACL_LINEAR,
    "alf": _DYNACL_LINEAR,
    "aff": {
        ALL: {"milestones": (15, 20), "batch_size": 128, "lr": 0.1},  # :846-849
        "stl10-96": {"milestones": (10, 20)},  # :844-845
    },
}
ASSIGNMENTS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "ACL": {  # V/utils.py:805-825
        "slf": _ACL_LINEAR,
        "alf": _ACL_LINEAR,
        # :820-824
        "aff": {ALL: {"lr": 0.1, "batch_size": 128, "epochs": 100, "milestones": (40, 60)}},
    },
    "DynACL": _DYNACL,
    "DynACL++": _DYNACL,
    "AdvCL": _ADVCL,
    "A-InfoNCE": _ADVCL,
    "DeACL": _ADVCL,
    "DynACL-AIR": {  # V/utils.py:924-958
        "slf": {
            ALL: {"milestones": (10, 20)},  # :939
            "cifar10": {"batch_size": 512, "lr": 0.01, "epochs": 5},  # :926-929, carried over
            "cifar100": {"batch_size": 512, "lr": 0.1},  # :930-932
            "stl10-96": {"batch_size": 512, "lr": 0.1},  # :933-935
            "stl10-32": {"batch_size": 128, "lr": 0.01},  # :936-938
        },
        "alf": {
            ALL: {"milestones": (10, 20)},  # :953
            "cifar10": {"batch_size": 512, "lr": 0.01},  # :941-943
            "cifar100": {"batch_size": 512, "lr": 0.1},  # :944-946
            "stl10-32": {"batch_size": 128, "lr": 0.01},  # :947-949
            "stl10-96": {"batch_size": 128, "lr": 0.1},  # :950-952
        },
        "aff": {ALL: {"batch_size": 128, "milestones": (15, 20), "lr": 0.1}},  # :954-957
    },
    "DynACL-AIR++": {  # V/utils.py:961-995 (bnNameCnt = 0 at :995 is dead: :530,548,773 force 1)
        "slf": {
            ALL: {"milestones": (10, 20)},  # :972
            "cifar10": {"batch_size": 512, "lr": 0.01},  # :963-965
            "cifar100": {"batch_size": 512, "lr": 0.09},  # :966-968
            "stl10-96": {"batch_size": 512, "lr": 0.1},  # :969-971; no stl10-32 branch
        },
        "alf": {
            ALL: {"milestones": (10, 20)},  # :984
            "cifar10": {"batch_size": 512, "lr": 0.01, "epochs": 4},  # :974-977, carried over
            "cifar100": {"batch_size": 512, "lr": 0.1},  # :978-980
            "stl10-96": {"batch_size": 128, "lr": 0.1},  # :981-983
        },
        # :986-994; the cifar10 branch's `args.epoch = 19` (:990) is a typo that changes nothing
        "aff": {ALL: {"batch_size": 128, "milestones": (15, 20), "lr": 0.1}},
    },
    # The CLI choice 'DynACL-RCS' (V/vanilla_finetuning.py:62) never matches 'DynACL_RCS'
    # (V/utils.py:828), so it runs the final else branch (:997-1000) for every scheme.
    # ('ACL_IR', :887-921, is not a CLI choice: unreachable, left out.)
    "DynACL-RCS": {
        s: {ALL: {"batch_size": 128, "milestones": (15, 20), "lr": 0.1}} for s in SCHEME_ORDER
    },
}
FAMILIES = tuple(ASSIGNMENTS)

# acbench method -> RobustSSL family (--pretraining). advcl-ip/-hn/-iphn are A-InfoNCE's variants
# (AdvCL's settings either way). dynacl++ and dynacl-air++ are the post-processed encoders (the
# release's DynACL++ STL-10 line runs them as --pretraining DynACL: the same settings). dynacl-rcs
# gets what the release ran for 'DynACL-RCS': its final else branch (see ASSIGNMENTS), not the
# DynACL settings its 'DynACL_RCS' spelling meant and RCS's own finetuner uses
# (GodXuxilie/Efficient_ACL_via_RCS finetuning_utils.py:765-787).
METHOD_FAMILY = {
    "acl": "ACL",
    "advcl": "AdvCL",
    "advcl-ip": "A-InfoNCE",
    "advcl-hn": "A-InfoNCE",
    "advcl-iphn": "A-InfoNCE",
    "deacl": "DeACL",
    "dynacl": "DynACL",
    "dynacl++": "DynACL++",
    "dynacl-air": "DynACL-AIR",
    "dynacl-air++": "DynACL-AIR++",
    "dynacl-rcs": "DynACL-RCS",
}
# Methods of RobustSSL's families that it never finetuned: why they have no robustssl protocol.
NO_FAMILY = {
    "acl-air": "RobustSSL has no ACL-AIR checkpoint and no --pretraining choice for it (its 'ACL_IR' "
    "branch, V/utils.py:887-921, is unreachable)",
    "acl-air++": "RobustSSL has no ACL-AIR++ checkpoint and no --pretraining choice for it",
    "acl-rcs": "RobustSSL has no ACL-RCS checkpoint and no --pretraining choice for it",
    "deacl-teacher": "it is DeACL's SimCLR teacher stage; RobustSSL finetunes the student, deacl",
}

# The BN branch finetuned (and kept after dual-BN AFF): 'pgd' = bn_list.1. ACL and the DynACL
# families: bnNameCnt = 1 (V/utils.py:530,548,773); AdvCL and A-InfoNCE: load_BN_checkpoint_AdvCL
# keeps bn_list.1 (:106-130), their 'pgd' (bn_list.2 is 'pgd_ce'). DeACL's checkpoint has one BN
# (load_BN_checkpoint_DeACL, :95-103): "" = the checkpoint's own finetuning branch.
BRANCH = {family: "pgd" for family in FAMILIES} | {"DeACL": ""}
CLEAN_BRANCH = "normal"  # dual-BN AFF: bn_names ['normal', 'pgd'] (V/utils.py:470,615-616,633-634)

# Families whose checkpoints have one BN per layer after conversion (loaded single-BN).
SINGLE_BN_CHECKPOINT = frozenset({"AdvCL", "A-InfoNCE", "DeACL"})

# What V/run_vanilla_tune.sh ran: (family, pretrain, finetune) -> (line, dual-BN AFF). --dualBN
# defaults to 1 (V/vanilla_finetuning.py:19); lines passing --dualBN 0 run single-BN AFF.
RUNS: dict[tuple[str, str, str], tuple[int, bool]] = {
    ("ACL", "cifar10", "cifar10"): (2, True),
    ("DynACL", "cifar10", "cifar10"): (3, True),
    ("AdvCL", "cifar10", "cifar10"): (4, False),
    ("A-InfoNCE", "cifar10", "cifar10"): (5, False),
    ("DeACL", "cifar10", "cifar10"): (6, False),
    ("DynACL++", "cifar10", "cifar10"): (7, True),
    ("DynACL-AIR", "cifar10", "cifar10"): (8, True),
    ("DynACL-AIR++", "cifar10", "cifar10"): (9, True),
    ("DynACL-RCS", "cifar10", "cifar10"): (10, True),
    ("ACL", "cifar100", "cifar100"): (13, True),
    ("DynACL", "cifar100", "cifar100"): (14, True),
    ("DynACL++", "cifar100", "cifar100"): (15, True),
    ("AdvCL", "cifar100", "cifar100"): (16, False),
    ("A-InfoNCE", "cifar100", "cifar100"): (17, False),
    ("DynACL-AIR", "cifar100", "cifar100"): (18, True),
    ("DynACL-AIR++", "cifar100", "cifar100"): (19, True),
    ("DynACL-RCS", "cifar100", "cifar100"): (20, True),
    ("ACL", "stl10", "stl10"): (23, True),
    ("DynACL", "stl10", "stl10"): (24, True),
    ("DynACL++", "stl10", "stl10"): (25, True),  # run as --pretraining DynACL: the same settings
    ("DynACL-AIR", "stl10", "stl10"): (26, True),
    ("DynACL-AIR++", "stl10", "stl10"): (27, True),
    ("DynACL-RCS", "stl10", "stl10"): (28, True),
    ("ACL", "cifar10", "stl10"): (31, False),
    ("DynACL", "cifar10", "stl10"): (32, False),
    ("AdvCL", "cifar10", "stl10"): (33, False),
    ("A-InfoNCE", "cifar10", "stl10"): (34, False),
    ("DeACL", "cifar10", "stl10"): (35, False),
    ("DynACL-AIR", "cifar10", "stl10"): (36, False),
    ("DynACL-RCS", "cifar10", "stl10"): (37, False),
    ("ACL", "cifar100", "stl10"): (40, True),
    ("DynACL", "cifar100", "stl10"): (41, True),
    ("AdvCL", "cifar100", "stl10"): (42, True),  # dual-BN AFF of a single-BN checkpoint, see flags
    ("A-InfoNCE", "cifar100", "stl10"): (43, True),  # the same
    ("DynACL-AIR", "cifar100", "stl10"): (44, True),
}

# acbench's deviations from the release on every robustssl run (each release behaviour is not
# reproducible or not sound); protocol_flags adds those specific to one run. The release:
# AutoAttack(..., seed=None) seeds from the clock (V/utils.py:391); every load is strict=False with
# missing keys only logged (:534,540,552,555-557); pgd_attack's first forward and TRADES' start
# are not clipped to [0, 1] (:234-243, :567, :609).
ROBUSTSSL_DEVIATIONS = (
    "AutoAttack seed fixed (release: seed=None, i.e. the clock)",
    "strict checkpoint loading (release: strict=False, missing keys only logged)",
    "attacks start inside [0, 1] (release: unclipped PGD and TRADES starts)",
)


class NoProtocol(ConfigError):
    """A method, scheme or dataset pair that a protocol has no settings for."""


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else ``UnknownName`` (did you mean...)."""
    return check_choice("protocol", protocol, PROTOCOLS)


def robustssl_family(method: str) -> str:
    """The RobustSSL family whose settings ``method`` gets; :class:`NoProtocol` if it has none."""
    try:
        return METHOD_FAMILY[method]
    except KeyError:
        why = NO_FAMILY.get(method, f"RobustSSL's vanilla finetuning has settings only for {', '.join(FAMILIES)}")
        raise NoProtocol(
            f"method {method!r} has no robustssl protocol: {why} (acbench: "
            f"{', '.join(METHOD_FAMILY)}); use --protocol uniform"
        ) from None


def dataset_key(pretrain_dataset: str, finetune_dataset: str) -> str:
    """The release's branch for a downstream dataset (see the module docstring)."""
    if finetune_dataset == "stl10":
        return "stl10-96" if pretrain_dataset == "stl10" else "stl10-32"
    return finetune_dataset if finetune_dataset in DATASET_KEYS else "cifar10"


def _family(family: str) -> str:
    if family not in ASSIGNMENTS:
        raise unknown("RobustSSL family", family, FAMILIES)
    return family


def release_settings(family: str, scheme: str, key: str) -> dict[str, Any]:
    """The release's batch/lr/milestones/epochs when ``scheme`` runs in ``--mode ALL``: the
    argparse defaults, then each scheme's assignments up to ``scheme`` (they carry over)."""
    check_choice("RobustSSL scheme", scheme, SCHEME_ORDER)
    check_choice("RobustSSL dataset", key, DATASET_KEYS)
    args = dict(RELEASE_DEFAULTS)
    for s in SCHEME_ORDER:
        branches = ASSIGNMENTS[_family(family)][s]
        args.update(branches.get(ALL, {}))
        args.update(branches.get(key, {}))
        if s == scheme:
            return args
    raise AssertionError("unreachable")


def release_dual_bn(family: str, pretrain_dataset: str, finetune_dataset: str) -> bool:
    """Whether the release's AFF is dual-BN for this run (:data:`RUNS`); for a run it never made,
    its rule: single-BN for CIFAR-10 -> STL-10 and for single-BN checkpoints in-domain, dual for
    CIFAR-100 -> STL-10; DeACL (one BN, never run from CIFAR-100) is always single-BN."""
    run = RUNS.get((_family(family), pretrain_dataset, finetune_dataset))
    if run is not None:
        return run[1]
    if family == "DeACL":  # one BN branch (acbench's deacl too): no second branch to train
        return False
    if finetune_dataset == "stl10" and pretrain_dataset in ("cifar10", "cifar100"):
        return pretrain_dataset == "cifar100"
    return family not in SINGLE_BN_CHECKPOINT


def release_config(
    family: str, scheme: str, pretrain_dataset: str, finetune_dataset: str, selection: str = "last"
) -> FinetuneConfig:
    """The release's finetuning of ``family``'s encoder under ``scheme`` (unscaled)."""
    key = dataset_key(pretrain_dataset, finetune_dataset)
    args = release_settings(family, scheme, key)
    dual = scheme == "aff" and release_dual_bn(family, pretrain_dataset, finetune_dataset)
    return FinetuneConfig(
        scheme,
        epochs=args["epochs"],
        batch_size=args["batch_size"],
        lr=args["lr"],
        milestones=tuple(args["milestones"]),
        momentum=args["momentum"],
        weight_decay=args["weight_decay"],
        attack_steps=args["attack_steps"],
        attack_step=args["attack_step"],
        eps=args["eps"],
        trades_beta=TRADES_BETA,
        selection=selection,
        branch=BRANCH[family],
        dual_bn=dual,
    )


def finetune_config(
    protocol: str,
    method: str,
    scheme: str,
    pretrain_dataset: str,
    finetune_dataset: str,
    *,
    selection: str = "last",
    overrides: Mapping[str, Any] | None = None,
) -> FinetuneConfig:
    """The finetuning of ``method``'s encoder (pretrained on ``pretrain_dataset``) under
    ``scheme`` on ``finetune_dataset``, as ``protocol`` runs it, then a preset's ``overrides``.

    ``uniform``: ``get_scheme(scheme).paper_config(finetune_dataset)``. ``robustssl``:
    :func:`release_config` of the method's family; :class:`NoProtocol` for a method or scheme it
    has no settings for.
    """
    check_protocol(protocol)
    if protocol == UNIFORM:
        base = get_scheme(scheme).paper_config(finetune_dataset)
    else:
        get_scheme(scheme)  # an unknown name: UnknownName (did you mean ...)
        if scheme not in SCHEME_ORDER:
            raise NoProtocol(
                f"scheme {scheme!r} has no robustssl protocol (it has {', '.join(SCHEME_ORDER)})"
            )
        base = release_config(robustssl_family(method), scheme, pretrain_dataset, finetune_dataset)
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    for name in overrides or {}:
        if name not in fields or name in ("scheme", "selection"):
            raise unknown("finetuning setting", name, sorted(fields - {"scheme", "selection"}))
    return dataclasses.replace(base, **dict(overrides or {}), selection=selection)


def common_deviations(protocol: str) -> tuple[str, ...]:
    """The deviation messages every record of ``protocol`` carries (a table's legend says them)."""
    return ROBUSTSSL_DEVIATIONS if check_protocol(protocol) == ROBUSTSSL else ()


def protocol_flags(
    protocol: str,
    method: str,
    scheme: str,
    pretrain_dataset: str,
    finetune_dataset: str,
    selection: str = "last",
) -> tuple[Flag, ...]:
    """Where this run differs from what ``protocol`` reproduces, as record flags (kind
    :data:`PROTOCOL_DEVIATION`): none for ``uniform``; for ``robustssl`` the common deviations,
    then those of this run (a run the release never made, a release load that left layers at
    initialisation, validation-split selection)."""
    if check_protocol(protocol) == UNIFORM:
        return ()
    family = robustssl_family(method)
    messages = list(ROBUSTSSL_DEVIATIONS)
    if (family, pretrain_dataset, finetune_dataset) not in RUNS:
        key = dataset_key(pretrain_dataset, finetune_dataset)
        messages.append(
            f"not run by RobustSSL ({family} {pretrain_dataset} -> {finetune_dataset} is not in "
            f"its run_vanilla_tune.sh): settings of its {key} branch"
        )
    dual = scheme == "aff" and release_dual_bn(family, pretrain_dataset, finetune_dataset)
    if dual and family in SINGLE_BN_CHECKPOINT:  # V/utils.py:476-492,542-553
        messages.append(
            "release left BN layers and shortcut convs at init: its strict=False load of this "
            "single-BN checkpoint into the dual-BN AFF model matched none of them, and it added "
            "ImageNet input normalisation; acbench starts both BN branches from the encoder's "
            "and keeps its normalisation"
        )
    if family == "DeACL":  # V/models/resnet.py:147 vs DeACL's solo-learn stem (WAVE2 section 4, quirk 2)
        messages.append(
            "release finetunes DeACL's padding-2 stem encoder in a padding-1 ResNet (weights load, "
            "features differ); acbench keeps the stem it was pretrained with (deacl's stem_padding)"
        )
    if selection != "last":  # V/utils.py:727-762
        messages.append(
            f"{selection}-split epoch selection (release: the last epoch; with "
            "--test_frequency > 0 it would select on the test set)"
        )
    return tuple(Flag(PROTOCOL_DEVIATION, m) for m in messages)
