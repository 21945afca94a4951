"""Importing the original repositories' released encoders (benchmark.released).

The fixtures in ``tests/fixtures/released/`` were made once by running each repository's own model
code (not part of acbench) on weights drawn by :func:`release_state` below, in the release's key
layout: they hold the original code's outputs (features per BN branch, head outputs) on the inputs
of :func:`inputs`, and the sha256 of the original model's key layout. A test regenerates the same
checkpoint file here, imports it, and compares acbench's outputs with the stored ones (<= 1e-5).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import write_cifar10

from benchmark.checkpoints import load_encoder
from benchmark.data import load_dataset
from benchmark.errors import ConfigError, UnknownName
from benchmark.io import save_checkpoint
from benchmark.labels import check_pseudo_labels
from benchmark.models import BackboneConfig, classifier_from_encoder
from benchmark.released import (
    FORMATS,
    ReleaseError,
    convert_advcl_labels,
    fit_to_model,
    read_released,
)
from methods import get_method

FIXTURES = Path(__file__).parent / "fixtures" / "released"
TOL = 1e-5
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the ACL family's normalize buffers

# ---- the recipe: release key layouts and deterministic weights ---------------------------------

BN_PARAMS = (("weight", "bn_w"), ("bias", "bn_b"), ("running_mean", "rm"), ("running_var", "rv"),
             ("num_batches_tracked", "nbt"))


def _bn(prefix: str, c: int, n_branches: int) -> list[tuple[str, tuple, str]]:
    subs = [f".bn_list.{i}" for i in range(n_branches)] if n_branches else [""]
    return [(f"{prefix}{s}.{p}", () if kind == "nbt" else (c,), kind) for s in subs for p, kind in BN_PARAMS]


def resnet_layout(n_bn: int, normalize: bool, stem: str = "cifar", single: bool = False) -> list:
    """(key, shape, kind) of the releases' ResNet-18 state dicts, in their order. ``n_bn``: BN
    branches (bn_list.i) per layer, 0 for plain BN; ``single``: RoCL's shortcut.0/1 naming."""
    keys: list[tuple[str, tuple, str]] = []
    if normalize:
        keys += [("normalize.mean", (3,), "mean"), ("normalize.std", (3,), "std")]
    k = 7 if stem == "imagenet" else 3
    keys.append(("conv1.weight", (64, 3, k, k), "conv"))
    keys += _bn("bn1", 64, n_bn)
    cin = 64
    for s, c in enumerate((64, 128, 256, 512), 1):
        for b in range(2):
            p = f"layer{s}.{b}."
            keys.append((p + "conv1.weight", (c, cin, 3, 3), "conv"))
            keys += _bn(p + "bn1", c, n_bn)
            keys.append((p + "conv2.weight", (c, c, 3, 3), "conv"))
            keys += _bn(p + "bn2", c, n_bn)
            if b == 0 and cin != c:
                conv, bn = ("shortcut.0", "shortcut.1") if single else ("downsample.conv", "downsample.bn")
                keys.append((p + conv + ".weight", (c, cin, 1, 1), "conv"))
                keys += _bn(p + bn, c, n_bn)
            cin = c
    return keys


def _linear(name: str, cout: int, cin: int, bias: bool = True) -> list:
    return [(f"{name}.weight", (cout, cin), "lin")] + ([(f"{name}.bias", (cout,), "bias")] if bias else [])


def acl_head(layers: int = 3, n_bn: int = 2) -> list:
    """ACL's proj_head (models/resnet_multi_bn.py:181-216): fc1 (bias), fc2, fc3 (no bias), BN each."""
    out = []
    for i in range(1, layers + 1):
        out += _linear(f"fc.fc{i}", 512, 512, bias=i == 1) + _bn(f"fc.bn{i}", 512, n_bn)
    return out


def advcl_heads() -> list:
    """AdvCL's heads in __init__ order (models/resnet_cifar_multibn_ensembleFC.py:258-286)."""
    out = []
    for h in (2, 10, 50, 100, 500):
        out += _linear(f"fc_{h:03d}", h, 512)
    for name, d_in, d_mid, d_out in (("head_ce", 512, 512, 1000), ("head_proj", 512, 512, 128),
                                     ("head_pred", 128, 128, 128)):
        out += _linear(f"{name}.0", d_mid, d_in) + _bn(f"{name}.1", d_mid, 0) + _linear(f"{name}.3", d_out, d_mid)
    return out


ROCL_PROJECTOR = _linear("linear_1", 2048, 512) + _linear("linear_2", 128, 2048)

LAYOUTS = {
    "acl": resnet_layout(2, True) + acl_head(),
    "acl-stl": resnet_layout(2, True, stem="imagenet") + acl_head(),
    "advcl": resnet_layout(3, False) + advcl_heads(),
    "rocl": resnet_layout(0, False, single=True),
    "rocl-projector": ROCL_PROJECTOR,
}


def layout_sha256(pairs) -> str:
    """What the fixtures store for the original model's state dict: keys and shapes, in order."""
    text = "\n".join(f"{k} {tuple(int(d) for d in shape)}" for k, shape in pairs)
    return hashlib.sha256(text.encode()).hexdigest()


def release_state(layout: list, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic weights for ``layout``: tensor i from generator seed ``seed * 1_000_003 + i``,
    scaled so that activations stay O(1) through the ResNet."""
    out = {}
    for i, (key, shape, kind) in enumerate(layout):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        if kind == "nbt":
            out[key] = torch.tensor(1 + i % 7)
        elif kind in ("mean", "std"):
            out[key] = torch.tensor(IMAGENET[kind == "std"])
        elif kind in ("conv", "lin"):
            fan_in = math.prod(shape[1:])
            out[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        elif kind == "bn_w":
            out[key] = 0.5 + 0.5 * torch.rand(shape, generator=g)
        elif kind == "rv":
            out[key] = 0.5 + torch.rand(shape, generator=g)
        else:  # bias, bn_b, rm
            out[key] = 0.1 * torch.randn(shape, generator=g)
    return out


def inputs(size: int = 32, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(12345))


def prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def save_release(path: Path, fmt: str, sd: dict) -> Path:
    """``sd`` in the container each repository saves (see benchmark.released.FORMATS' sources)."""
    optim = {"state": {}, "param_groups": [{"lr": 0.5, "momentum": 0.9, "params": [0, 1]}]}
    if fmt in ("acl", "air"):
        obj = {"epoch": 1000, "state_dict": sd, "optim": optim}
    elif fmt == "dynacl":
        obj = {"epoch": 1000, "state_dict": sd}
    elif fmt == "rocl":
        obj = {"epoch": 999, "acc": torch.tensor(1.5), "model": prefixed(sd, "module."),
               "optimizer_state": optim, "rng_state": torch.get_rng_state()}
    elif fmt in ("advcl", "a-infonce"):
        obj = {"model": prefixed(sd, "module."), "epoch": 1000, "rng_state": torch.get_rng_state()}
    else:  # robustssl: the zoo's files as their repositories saved them, or bare
        obj = sd
    torch.save(obj, path)
    return path


# ---- importing each format reproduces the original code's outputs -----------------------------

# case (fixture) -> format, release layout, acbench method it is imported for
CASES = {
    "acl": ("acl", "acl", "acl"),
    "dynacl": ("dynacl", "acl", "acl"),
    "dynacl-stl": ("dynacl", "acl-stl", "acl"),
    "air": ("air", "acl", "acl"),
    "advcl": ("advcl", "advcl", "advcl"),
    "a-infonce": ("a-infonce", "advcl", "advcl-ip"),
    "rocl": ("rocl", "rocl", "rocl"),
    "a-infonce-rocl": ("a-infonce-rocl", "rocl", "rocl-ip"),
    "robustssl-acl": ("robustssl", "acl", "acl"),
    "robustssl-advcl": ("robustssl", "advcl", "advcl"),
}


def fixture(case: str) -> dict:
    return torch.load(FIXTURES / f"{case}.outputs", weights_only=True)


def import_release(tmp_path: Path, case: str, sd: dict | None = None, projector: bool = True):
    """Write the case's release file (recipe weights unless ``sd``), import it and fit it to the
    method's model; returns (imported, model in eval mode)."""
    fmt, layout, method = CASES[case]
    path = save_release(tmp_path / f"{case}.pt", fmt, release_state(LAYOUTS[layout]) if sd is None else sd)
    head = None
    if fmt in ("rocl", "a-infonce-rocl") and projector:
        head = save_release(tmp_path / f"{case}.pt_projector", fmt, release_state(LAYOUTS["rocl-projector"]))
    imp = read_released(path, fmt, method, head_path=head)
    m = get_method(method)
    model = m.build_model(BackboneConfig.from_dict(imp.backbone))
    imp = fit_to_model(imp, model.state_dict(), m.finetune_branch)
    missing, unexpected = model.load_state_dict(imp.state_dict, strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("encoder.")]
    return imp, model.eval()


def test_recipe_layouts_are_the_originals() -> None:
    """The key layouts written here are the original models' state dicts (hash from the fixtures)."""
    for case, (_, layout, _) in CASES.items():
        fx = fixture(case)
        if "layout_sha256" in fx:
            assert layout_sha256((k, s) for k, s, _ in LAYOUTS[layout]) == fx["layout_sha256"], case
    assert layout_sha256((k, s) for k, s, _ in ROCL_PROJECTOR) == fixture("rocl")["projector_layout_sha256"]
    wrapper = [(p + k, s) for p in ("encoder_q.", "encoder_k.") for k, s, _ in LAYOUTS["acl"]]
    assert layout_sha256(wrapper) == fixture("dynacl")["wrapper_layout_sha256"]


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_features_equal_original_code(tmp_path: Path, case: str) -> None:
    fx = fixture(case)
    imp, model = import_release(tmp_path, case)
    x = inputs(fx["size"])
    if case.startswith("robustssl"):  # RobustSSL finetunes the pgd branch as a single-BN network
        clf = classifier_from_encoder(model.encoder, imp.finetune_branch, 10).eval()
        assert (clf.encoder(x) - fx["features"]["pgd"]).abs().max() <= TOL
        return
    assert set(fx["features"]) == set(imp.branches)
    for branch, want in fx["features"].items():
        assert (model.features(x, branch) - want).abs().max() <= TOL, branch
    for branch, want in fx.get("head", {}).items():  # ACL's head is unnormalised, AdvCL's normalised
        got = model.head(model.features(x, branch), branch) if case == "acl" else model(x, branch)
        if case == "rocl":
            want = torch.nn.functional.normalize(want, dim=-1)
        assert (got - want).abs().max() <= TOL, branch
    for h, want in fx.get("logits", {}).get("pgd_ce", {}).items():
        assert (model.extra_heads[f"fc{h}"](model.features(x, "pgd_ce")) - want).abs().max() <= TOL
    # and the same through encoder.pt, as the import stage stores it
    save_checkpoint(tmp_path / "encoder.pt", "encoder", imp.encoder_payload({}, {}))
    encoder, ck = load_encoder(tmp_path / "encoder.pt")
    assert ck["provenance"]["sha256"] == imp.provenance["sha256"]
    for branch, want in fx["features"].items():
        assert (encoder.eval()(x, branch) - want).abs().max() <= TOL


def test_provenance_and_heads(tmp_path: Path) -> None:
    imp, _ = import_release(tmp_path, "acl")
    p = imp.provenance
    assert p["format"] == "acl" and p["container"] == "state_dict" and p["other_entries"] == ["epoch", "optim"]
    assert p["sha256"] == hashlib.sha256((tmp_path / "acl.pt").read_bytes()).hexdigest()
    assert "train_simCLR.py" in p["source"] and p["heads"] == ["head"] and p["ignored"] == {}
    assert sorted(p["filled"]) == ["head.linears.1.bias", "head.linears.2.bias"]  # bias=False layers
    assert imp.branches == ("normal", "pgd") and imp.finetune_branch == "pgd"
    assert imp.backbone["mean"] == list(IMAGENET[0]) or tuple(imp.backbone["mean"]) == pytest.approx(IMAGENET[0])
    adv, _ = import_release(tmp_path, "advcl")
    assert adv.provenance["prefix"] == "module." and set(adv.provenance["ignored"]) == {"head_pred.*", "head_ce.*"}
    assert {"extra_heads.fc2", "extra_heads.fc500", "head"} <= set(adv.provenance["heads"])
    assert tuple(adv.backbone["mean"]) == (0.0, 0.0, 0.0) and tuple(adv.backbone["std"]) == (1.0, 1.0, 1.0)
    rocl, _ = import_release(tmp_path, "rocl", projector=False)
    assert rocl.provenance["heads"] == [] and rocl.finetune_branch == "normal"
    stl, _ = import_release(tmp_path, "dynacl-stl")
    assert stl.backbone["name"] == "resnet18-imagenet"


def test_zoo_containers_and_normalisation_from_the_file(tmp_path: Path) -> None:
    sd = release_state(LAYOUTS["acl"])
    sd["normalize.mean"] = torch.tensor([0.5, 0.25, 0.125])
    torch.save({"state_dict_dual": prefixed(sd, "module."), "epoch": 25}, tmp_path / "zoo.pt")
    imp = read_released(tmp_path / "zoo.pt", "robustssl", "acl")
    assert imp.provenance["container"] == "state_dict_dual" and imp.provenance["prefix"] == "module."
    assert tuple(imp.backbone["mean"]) == (0.5, 0.25, 0.125)
    assert imp.state_dict["encoder.normalize.mean"].flatten().tolist() == [0.5, 0.25, 0.125]


def test_a_bias_free_method_head_drops_the_filled_zero_biases(tmp_path: Path) -> None:
    p = save_release(tmp_path / "a.pt", "acl", release_state(LAYOUTS["acl"]))
    imp = read_released(p, "acl", "acl")
    state = get_method("acl").build_model(BackboneConfig.from_dict(imp.backbone)).state_dict()
    del state["head.linears.1.bias"], state["head.linears.2.bias"]
    fitted = fit_to_model(imp, state)
    assert fitted.provenance["heads"] == ["head"] and fitted.provenance["filled"] == {}
    assert set(fitted.state_dict) == set(state)


@torch.no_grad()
def test_dynacl_momentum_wrapper_gives_encoder_k(tmp_path: Path) -> None:
    sd = release_state(LAYOUTS["acl"])
    wrapper = {**prefixed(release_state(LAYOUTS["acl"], seed=7), "encoder_q."), **prefixed(sd, "encoder_k.")}
    imp, model = import_release(tmp_path, "dynacl", sd=wrapper)
    assert "encoder_q.*" in imp.provenance["ignored"]
    fx = fixture("dynacl")
    for branch, want in fx["features"].items():
        assert (model.features(inputs(), branch) - want).abs().max() <= TOL


@torch.no_grad()
def test_heads_the_method_lacks_are_listed_not_mapped(tmp_path: Path) -> None:
    """A 2-layer ACL head (--twoLayerProj) and DynACL++/AIR++'s pseudo-label classifier: encoder as
    before, the head listed as ignored with its reason."""
    two = resnet_layout(2, True) + acl_head(layers=2)
    imp, model = import_release(tmp_path, "acl", sd=release_state(two))
    assert imp.provenance["heads"] == [] and "another structure" in imp.provenance["ignored"]["head (release head)"]
    assert (model.features(inputs(), "pgd") - fixture("acl")["features"]["pgd"]).abs().max() <= TOL
    clf = resnet_layout(2, True) + _linear("fc", 10, 512)
    imp, _ = import_release(tmp_path, "air", sd=release_state(clf))
    assert "LPAFT_AFF.py" in imp.provenance["ignored"]["fc.*"]


def test_old_serialisation_and_missing_step_counters(tmp_path: Path) -> None:
    sd = {k: v for k, v in release_state(LAYOUTS["acl"]).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save({"state_dict": sd}, path, _use_new_zipfile_serialization=False)  # torch <= 1.5 files
    imp = read_released(path, "acl", "acl")
    assert imp.state_dict["encoder.bn1.bn.pgd.num_batches_tracked"] == 0
    assert "encoder.bn1.bn.pgd.num_batches_tracked" in imp.provenance["filled"]


# ---- what is refused ----------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def refused(tmp_path: Path, fn, *args, match: str, **kwargs) -> str:
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ReleaseError, match=match) as e:
        fn(*args, **kwargs)
    assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    return str(e.value)


def test_wrong_format_is_named(tmp_path: Path) -> None:
    adv = save_release(tmp_path / "adv.pt", "advcl", release_state(LAYOUTS["advcl"]))
    msg = refused(tmp_path, read_released, adv, "rocl", "rocl", match="AdvCL-family checkpoint .*, not format 'rocl'")
    assert "--format advcl or a-infonce or robustssl" in msg
    acl = save_release(tmp_path / "acl.pt", "acl", release_state(LAYOUTS["acl"]))
    refused(tmp_path, read_released, acl, "advcl", "advcl", match="dual-BN ACL-family checkpoint .*, not format 'advcl'")
    proj = save_release(tmp_path / "p.pt", "rocl", release_state(ROCL_PROJECTOR))
    refused(tmp_path, read_released, proj, "rocl", "rocl", match="pass this one as the projector")
    with pytest.raises(UnknownName, match="did you mean 'acl'"):
        read_released(acl, "acll", "acl")


def test_missing_extra_and_misshapen_tensors(tmp_path: Path) -> None:
    sd = release_state(LAYOUTS["acl"])
    gone = {k: v for k, v in sd.items() if k != "layer2.0.conv1.weight"}
    p = save_release(tmp_path / "a.pt", "acl", gone)
    refused(tmp_path, read_released, p, "acl", "acl", match=r"missing 1 \(first: layer2.0.conv1.weight\)")
    extra = {**sd, "fc.fc9.bias": torch.zeros(3), "layer1.0.bn1.extra": torch.zeros(1)}
    p = save_release(tmp_path / "b.pt", "acl", extra)
    refused(tmp_path, read_released, p, "acl", "acl", match=r"left over 2 \(first: fc.fc9.bias, layer1.0.bn1.extra\)")
    bad = {**sd, "layer3.1.conv2.weight": torch.zeros(256, 256, 1, 1)}
    p = save_release(tmp_path / "c.pt", "acl", bad)
    refused(tmp_path, read_released, p, "acl", "acl", match=r"wrong shapes 1 \(first: layer3.1.conv2.weight \(256, 256, 1, 1\)")
    three = {k.replace("bn_list.1", "bn_list.2"): v for k, v in sd.items()} | sd
    p = save_release(tmp_path / "d.pt", "acl", three)
    refused(tmp_path, read_released, p, "acl", "acl", match=r"BN branches bn_list.\[0, 1, 2\]")


def test_code_running_and_foreign_files(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": release_state(LAYOUTS["rocl"]), "x": _RunsCode(marker)}, p)
    refused(tmp_path, read_released, p, "rocl", "rocl", match="refusing to load .*: it needs posix.system, .*would run code")
    assert not marker.exists()
    (tmp_path / "t.pt").write_text("not a checkpoint")
    refused(tmp_path, read_released, tmp_path / "t.pt", "acl", "acl", match="not a plain-weights PyTorch checkpoint")
    refused(tmp_path, read_released, tmp_path / "none.pt", "acl", "acl", match="does not exist")
    save_checkpoint(tmp_path / "encoder.pt", "encoder", {"state_dict": {}})
    refused(tmp_path, read_released, tmp_path / "encoder.pt", "acl", "acl", match="is an acbench 'encoder' checkpoint")
    torch.save({"epoch": 3, "best": 0.5}, tmp_path / "e.pt")
    refused(tmp_path, read_released, tmp_path / "e.pt", "acl", "acl", match="no state dict found")


def test_method_that_does_not_fit(tmp_path: Path) -> None:
    p = save_release(tmp_path / "a.pt", "acl", release_state(LAYOUTS["acl"]))
    imp = read_released(p, "acl", "advcl")
    model = get_method("advcl").build_model(BackboneConfig.from_dict(imp.backbone))
    refused(tmp_path, fit_to_model, imp, model.state_dict(), match="BN branches normal, pgd, but the method's has normal, pgd, pgd_ce")
    imp = read_released(p, "acl", "acl")
    model = get_method("acl").build_model(BackboneConfig.from_dict(imp.backbone))
    refused(tmp_path, fit_to_model, imp, model.state_dict(), "normal", match="finetuned from BN branch 'pgd'")


def test_formats_name_their_sources() -> None:
    assert set(FORMATS) == {"acl", "rocl", "advcl", "a-infonce", "a-infonce-rocl", "dynacl", "air", "robustssl"}
    assert all(":" in f.source and "/" in f.source for f in FORMATS.values())


# ---- AdvCL's pseudo-labels ---------------------------------------------------------------------


def _label_file(path: Path, n: int, torch_tensors: bool = False) -> dict:
    rng = np.random.default_rng(0)
    obj = {}
    for h in (2, 10, 50, 100, 500):
        a = rng.integers(0, h, n).astype(np.int32)
        obj[f"pseudo_train_{h}"] = torch.from_numpy(a.astype(np.int64)) if torch_tensors else a
        if not torch_tensors:
            obj[f"pseudo_test_{h}"] = rng.integers(0, h, 7).astype(np.int32)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=3 if torch_tensors else 2)  # AdvCL's file: int32 numpy arrays
    return obj


@pytest.mark.parametrize("torch_tensors", [False, True])  # AdvCL (CIFAR-10) / A-InfoNCE (CIFAR-100)
def test_advcl_labels_aligned_with_the_pretraining_images(tmp_path: Path, torch_tensors: bool) -> None:
    written = write_cifar10(tmp_path / "data", per_batch=40)
    x, y = written["train"]
    data = load_dataset("cifar10", tmp_path / "data", val_size=20)
    rows = {r.tobytes(): i for i, r in enumerate(x)}  # random images: each is unique
    keep = np.array([rows[img.numpy().reshape(-1).tobytes()] for img in data.pretrain_x])
    assert (np.diff(keep) > 0).all()  # pretrain_x is the train split minus the validation images, in order
    assert (keep == data.train_index.numpy()).all()  # the dataset says where each image came from
    raw = _label_file(tmp_path / "labels.pkl", len(x), torch_tensors)
    out = convert_advcl_labels(tmp_path / "labels.pkl", keep=keep, n_train=len(x))
    for h in (2, 10, 50, 100, 500):
        assert (out[f"k{h}"] == np.asarray(raw[f"pseudo_train_{h}"])[keep]).all()
    check_pseudo_labels(out, len(data.pretrain_x), "converted", (2, 10, 50, 100, 500))
    assert len(convert_advcl_labels(tmp_path / "labels.pkl", n_train=len(x))["k2"]) == len(x)


def test_advcl_labels_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"pseudo_train_2": _RunsCode(marker)}, f)
    refused(tmp_path, convert_advcl_labels, tmp_path / "evil.pkl", match="refusing to load .*posix.system")
    assert not marker.exists()
    obj = _label_file(tmp_path / "l.pkl", 30)
    refused(tmp_path, convert_advcl_labels, tmp_path / "l.pkl", n_train=50000, match="must be 50000 integer labels")
    del obj["pseudo_train_50"]
    with open(tmp_path / "m.pkl", "wb") as f:
        pickle.dump(obj, f)
    refused(tmp_path, convert_advcl_labels, tmp_path / "m.pkl", n_train=30, match="missing pseudo_train_50")
    refused(tmp_path, convert_advcl_labels, tmp_path / "l.pkl", keep=[0, 30], n_train=30, match="keep must be")


# ---- through the command line: import, then finetune and evaluate the released encoder -------------


@pytest.mark.slow
def test_import_then_run_pretrained_marks_the_leaderboard_row(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from benchmark.cli import main

    write_cifar10(tmp_path / "data", per_batch=240, n_test=64)  # room for the 1,000 validation images
    release = save_release(tmp_path / "acl.pt", "acl", release_state(LAYOUTS["acl"]))
    common = ["--results", str(tmp_path / "results"), "--data-dir", str(tmp_path / "data"), "--quiet"]
    r = CliRunner().invoke(main, ["import", str(release), "--format", "acl", "--method", "acl",
                                  "--dataset", "cifar10", *common, "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["provenance"]["sha256"] == hashlib.sha256(release.read_bytes()).hexdigest()
    again = CliRunner().invoke(main, ["import", str(release), "--format", "acl", "--method", "acl",
                                      "--dataset", "cifar10", *common, "--json"])
    assert json.loads(again.stdout)["key"] == info["key"]  # same file, same stage
    r = CliRunner().invoke(main, ["run", "--pretrained", info["key"], "--method", "acl", "--dataset", "cifar10",
                                  "--preset", "smoke", "--schemes", "slf", "--attacks", "clean", *common, "--json"])
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(r.stdout)
    assert rec["released"]["format"] == "acl" and rec["stages"]["pretrain"] == info["key"]
    assert any(f["kind"] == "released-checkpoint" for f in rec["flags"])
    board = CliRunner().invoke(main, ["leaderboard", "--results", str(tmp_path / "results")])
    assert "acl (released checkpoint)" in board.stdout
    wrong = CliRunner().invoke(main, ["run", "--pretrained", info["key"], "--method", "advcl", "--dataset", "cifar10",
                                      "--preset", "smoke", *common])
    assert wrong.exit_code == 1 and "is acl on cifar10" in wrong.output


def test_import_refuses_a_foreign_file_and_writes_nothing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from benchmark.cli import main

    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    r = CliRunner().invoke(main, ["import", str(bad), "--format", "acl", "--method", "acl", "--dataset", "cifar10",
                                  "--results", str(tmp_path / "results")])
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_plus_plus_post_processes_an_imported_base_checkpoint(tmp_path: Path) -> None:
    """DynACL++ on a released DynACL encoder: the imported checkpoint is the base of the LP-AFT
    stage (as RobustSSL post-processes its zoo's DynACL models), and the record says so."""
    import json

    from click.testing import CliRunner

    from benchmark.cli import main

    write_cifar10(tmp_path / "data", per_batch=240, n_test=64)
    release = save_release(tmp_path / "dynacl.pt", "dynacl", release_state(LAYOUTS["acl"]))
    common = ["--results", str(tmp_path / "results"), "--data-dir", str(tmp_path / "data"), "--quiet"]
    r = CliRunner().invoke(main, ["import", str(release), "--format", "dynacl", "--method", "dynacl",
                                  "--dataset", "cifar10", *common, "--json"])
    assert r.exit_code == 0, r.output
    key = json.loads(r.stdout)["key"]
    r = CliRunner().invoke(main, ["run", "--pretrained", key, "--method", "dynacl++", "--dataset", "cifar10",
                                  "--preset", "smoke", "--schemes", "slf", "--attacks", "clean", *common, "--json"])
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(r.stdout)
    assert rec["method"] == "dynacl++" and rec["stages"]["pretrain"] == key and rec["stages"]["lpaft"]
    assert rec["released"]["format"] == "dynacl"
    lpaft = tmp_path / "results" / "runs" / "lpaft" / rec["stages"]["lpaft"]
    assert (lpaft / "encoder.pt").is_file()
    # the imported encoder's 'normal' branch is carried through unchanged; 'pgd' is finetuned
    from benchmark.checkpoints import load_encoder
    base, _ = load_encoder(tmp_path / "results" / "runs" / "import" / key / "encoder.pt")
    post, _ = load_encoder(lpaft / "encoder.pt")
    sb, sp = base.state_dict(), post.state_dict()
    normal = [k for k in sb if ".normal." in k]
    assert normal and all(torch.equal(sb[k], sp[k]) for k in normal)
    assert any(not torch.equal(sb[k], sp[k]) for k in sb if ".pgd." in k)
