"""DynACL++ / AIR++ post-processing (``lpaft`` stage): k-means as kmeans_pytorch, the released TRADES
attack and loss of both variants (value and gradient, float64), pass counts per AFT step, the
checkpoint it leaves, caching and sharing of the base pretraining, presets, and a CLI smoke run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from benchmark.checkpoints import ENCODER, load_encoder
from benchmark.cli import main
from benchmark.config import get_preset
from benchmark.io import CheckpointError, load_checkpoint, save_checkpoint
from benchmark.kmeans import initial_indices, kmeans
from benchmark.models import BackboneConfig, ResNet, classifier_from_encoder, load_strict
from benchmark.perf_measure import PassCounter
from benchmark.pipeline import METHOD_STAGES, Target, target_session
from benchmark.postprocess import (
    PostProcessStage,
    attack_objective,
    recipe_deviations,
    scaled_recipe,
    trades_attack,
    trades_objective,
)
from benchmark.schemes.dual_bn import dual_bn_from_encoder
from benchmark.stage import RunOptions, Session, key_of, run_once
from benchmark.stages import PretrainStage
from methods import get_method, list_methods, method_class
from methods.plusplus import is_post_processed, released_post_recipe

PLUS = {"dynacl++": "dynacl", "dynacl-air++": "dynacl-air", "acl-air++": "acl-air"}


# ---- k-means: kmeans_pytorch 0.3, re-derived line by line ----------------------------------------


def kmeans_pytorch_reference(X: torch.Tensor, num_clusters: int, indices: torch.Tensor, tol: float):
    """``kmeans_pytorch.kmeans`` (PyPI 0.3, Euclidean) with the initial indices given."""
    X = X.float()
    initial_state = X[indices]
    while True:
        dis = ((X.unsqueeze(dim=1) - initial_state.unsqueeze(dim=0)) ** 2.0).sum(dim=-1).squeeze()
        choice_cluster = torch.argmin(dis, dim=1)
        initial_state_pre = initial_state.clone()
        for index in range(num_clusters):
            selected = torch.nonzero(choice_cluster == index).squeeze()
            selected = torch.index_select(X, 0, selected)
            initial_state[index] = selected.mean(dim=0)
        center_shift = torch.sum(torch.sqrt(torch.sum((initial_state - initial_state_pre) ** 2, dim=1)))
        if center_shift**2 < tol:
            break
    return choice_cluster, initial_state


def blobs(n: int = 90, d: int = 6, k: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    return centers[torch.arange(n) % k] + torch.randn(n, d, generator=g)


@pytest.mark.parametrize("k,tol", [(3, 1e-4), (4, 1e-5), (10, 1e-4)])
@pytest.mark.parametrize("seed", [0, 1])
def test_kmeans_is_kmeans_pytorch_from_the_same_init(k, tol, seed):
    x = blobs(seed=seed)
    init = initial_indices(len(x), k, torch.Generator().manual_seed(seed))
    labels, centers = kmeans_pytorch_reference(x.clone(), k, init, tol)
    out = kmeans(x, k, tol, init=init)
    assert torch.equal(out.labels, labels) and torch.equal(out.centers, centers)
    assert out.converged and out.empty == 0 and out.iterations >= 2


def test_kmeans_init_is_seeded_and_distinct():
    a = initial_indices(50, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, initial_indices(50, 10, torch.Generator().manual_seed(3)))
    assert len(set(a.tolist())) == 10 and not torch.equal(a, initial_indices(50, 10, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="2 <= k <= n"):
        initial_indices(5, 6)


def test_kmeans_empty_cluster_keeps_its_centre_and_terminates():
    """Two identical initial centres: ties go to the first, the second gets no point in the first
    iteration (the package would compute a NaN centre and never stop); here it keeps its centre,
    which then wins the two points at (0, 0) from the first centre, moved to (1/30, 0)."""
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    out = kmeans(x, 3, 1e-4, init=torch.tensor([0, 1, 3]))
    assert out.converged and out.empty == 1 and torch.isfinite(out.centers).all()
    assert out.labels.tolist() == [1, 1, 0, 2, 2] and torch.equal(out.centers[1], x[1])
    assert torch.allclose(out.centers[0], x[2]) and out.iterations == 3


# ---- the released TRADES of both variants, float64 ------------------------------------------------


def dual_model(seed: int = 0, classes: int = 5):
    torch.manual_seed(seed)
    enc = ResNet(BackboneConfig("resnet10-tiny", 3, (0.5,) * 3, (0.25,) * 3), branches=("normal", "pgd"))
    for m in enc.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    model = dual_bn_from_encoder(enc, "pgd", classes).double()
    torch.nn.init.normal_(model.fc.weight, std=0.5)
    return model


def trades_loss_dual_reference(model, x_natural, x_adv, y, natural_mode="pgd", beta=6.0):
    """The loss half of DYN ``utils.trades_loss_dual`` / AIR ``finetuning_utils.trades_loss_dual``."""
    model.train()
    logits = model(x_natural, natural_mode)
    loss = F.cross_entropy(logits, y)
    logits_adv = model(x_adv, "pgd")
    p = F.softmax(logits, dim=1)
    kl_sum = (p * (torch.log(p) - F.log_softmax(logits_adv, dim=1))).sum()
    return loss + beta * (1.0 / len(x_natural)) * kl_sum


def trades_attack_reference(model, x_natural, variant, steps=4, step_size=2 / 255, epsilon=8 / 255):
    """The attack half, as released: eval mode, the clean forward recomputed inside every step."""
    model.eval()
    if variant == "dynacl++":
        x_adv, natural = x_natural.detach(), "pgd"
    else:
        x_adv, natural = x_natural.detach() + 0.001 * torch.randn(x_natural.shape), "normal"
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            q = F.softmax(model(x_natural, natural), dim=1)
            loss_kl = (q * (torch.log(q) - F.log_softmax(model(x_adv, "pgd"), dim=1))).sum()
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


def _inputs(seed: int = 1, n: int = 6, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64)
    x_adv = (x + (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * 8 / 255).clamp(0, 1)
    return x, x_adv, torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("variant", ["dynacl++", "air++"])
def test_aft_loss_value_and_gradient_are_the_release(variant):
    recipe = released_post_recipe(variant)
    model = dual_model()
    ref = copy.deepcopy(model)
    x, x_adv, y = _inputs()
    loss = trades_objective(model, x, x_adv, y, recipe)
    expected = trades_loss_dual_reference(ref, x, x_adv, y)
    assert abs(loss.item() - expected.item()) < 1e-10
    loss.backward()
    expected.backward()
    grads = [(a.grad, b.grad) for a, b in zip(model.parameters(), ref.parameters())]
    assert all((a is None) == (b is None) for a, b in grads)
    assert max(float((a - b).abs().max()) for a, b in grads if a is not None) < 1e-10
    # the clean branch is in no train-mode forward: no gradient, statistics unchanged
    normal = [p for n, p in model.named_parameters() if ".bn.normal." in n]
    assert normal and all(p.grad is None for p in normal)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


@pytest.mark.parametrize("variant", ["dynacl++", "air++"])
def test_attack_objective_and_trajectory_are_the_release(variant):
    recipe = released_post_recipe(variant).replace(attack_steps=4)
    model = dual_model(seed=2)
    x, x_adv, _ = _inputs(seed=3)
    # the objective at a perturbed point: value and input gradient
    model.eval()
    natural = recipe.reference_branch
    with torch.no_grad():
        p_ref = F.softmax(model(x, natural), dim=1)
    a = x_adv.clone().requires_grad_(True)
    value = attack_objective(model(a, "pgd"), p_ref)
    (grad,) = torch.autograd.grad(value, a)
    b = x_adv.clone().requires_grad_(True)
    q = F.softmax(model(x, natural), dim=1)
    ref_value = (q * (torch.log(q) - F.log_softmax(model(b, "pgd"), dim=1))).sum()
    (ref_grad,) = torch.autograd.grad(ref_value, b)
    assert abs(value.item() - ref_value.item()) < 1e-10 and float((grad - ref_grad).abs().max()) < 1e-10
    # the whole inner maximisation (AIR++'s Gaussian start from the same draws)
    model.train()
    torch.manual_seed(7)
    ours = trades_attack(model, x, recipe)
    assert model.training  # the mode is restored
    torch.manual_seed(7)
    ref = trades_attack_reference(model, x, variant, steps=4)
    assert float((ours - ref).abs().max()) < 1e-10
    assert float((ours - x).abs().max()) <= 8 / 255 + 1e-12 and ours.min() >= 0 and ours.max() <= 1


def test_variants_differ_where_the_releases_do():
    dyn, air = released_post_recipe("dynacl++"), released_post_recipe("air++")
    assert (dyn.clusters, dyn.kmeans_tol, dyn.attack_start, dyn.reference_branch) == (10, 1e-4, "x", "pgd")
    assert (air.clusters, air.kmeans_tol, air.attack_start, air.reference_branch) == (None, 1e-5, "gaussian", "normal")
    common = ("lp_epochs", "lp_lr", "aft_epochs", "aft_lr", "milestones", "momentum", "weight_decay", "batch_size",
              "crop_padding", "flip", "trades_beta", "attack_steps", "attack_step", "eps", "branch", "feature_branch")
    assert [getattr(dyn, f) for f in common] == [getattr(air, f) for f in common] == [
        10, 0.01, 25, 0.1, (10, 20), 0.9, 1e-4, 512, 4, True, 6.0, 10, 2 / 255, 8 / 255, "pgd", "normal"]


@pytest.mark.parametrize("variant", ["dynacl++", "air++"])
def test_passes_per_aft_step(variant):
    """Per image and AFT step with K attack steps: 1 no-grad reference forward + K attack forwards
    + 2 loss forwards; K input-only backwards; 2 weight backwards (27 forward-equivalents, 37 of
    WAVE2's units at K = 10; the releases recompute the reference in every attack step: 46)."""
    k = 3
    recipe = released_post_recipe(variant).replace(attack_steps=k)
    model = dual_model().float()
    x, _, y = _inputs()
    x = x.float()
    with PassCounter(model.encoder.conv1) as c:
        loss = trades_objective(model, x, trades_attack(model, x, recipe), y, recipe)
        loss.backward()
    n = len(x)
    assert (c.forward, c.input_backward, c.weight_backward) == ((k + 3) * n, k * n, 2 * n)


# ---- presets ------------------------------------------------------------------------------------


def test_presets_scale_the_stage_and_record_it():
    released = released_post_recipe("dynacl++")
    assert scaled_recipe(get_preset("paper"), released, "cifar10") == released
    quick = scaled_recipe(get_preset("quick"), released, "digits")
    assert (quick.lp_epochs, quick.aft_epochs, quick.milestones, quick.batch_size) == (6, 15, (6, 12), 128)
    assert (quick.eps, quick.attack_steps, quick.attack_step) == (2 / 16, 3, 1 / 16)
    assert (quick.crop_padding, quick.flip, quick.lp_lr, quick.aft_lr) == (0, False, 0.01, 0.1)
    assert (quick.clusters, quick.kmeans_tol) == (10, 1e-4)
    devs = recipe_deviations(quick, released)
    assert "lp-aft aft_epochs 15 (released 25)" in devs and "lp-aft flip False (released True)" in devs
    assert not any("lr" in d or "clusters" in d for d in devs)
    smoke = scaled_recipe(get_preset("smoke"), released, "digits")
    assert (smoke.lp_epochs, smoke.aft_epochs, smoke.batch_size, smoke.attack_steps) == (1, 2, 32, 2)


# ---- methods, targets, keys -----------------------------------------------------------------------


def test_plus_plus_methods_are_registered_with_their_base():
    assert set(PLUS) <= set(list_methods())
    for name, base in PLUS.items():
        cls = method_class(name)
        assert is_post_processed(cls) and cls.base_method == base
        assert cls.Params is method_class(base).Params and cls.finetune_branch == "pgd"
        d = get_method(name, dataset="cifar100").describe()
        assert d["pretraining"] == base and d["paper_recipe"] == get_method(base, dataset="cifar100").describe()["paper_recipe"]
        assert d["post_processing"]["variant"] == ("dynacl++" if name == "dynacl++" else "air++")
    assert not any(is_post_processed(method_class(m)) for m in ("dynacl", "acl-air", "acl"))
    assert "RobustSSL" in method_class("acl-air++").summary


def test_plus_plus_target_shares_the_base_pretraining(tmp_path):
    opts = RunOptions(results=tmp_path, progress=False)
    for name, base in PLUS.items():
        stage = Target(name, preset="smoke").pretrain(opts)
        assert isinstance(stage, PostProcessStage) and isinstance(stage.base, PretrainStage)
        plain = Target(base, preset="smoke").pretrain(opts)
        assert key_of(stage.base, opts) == key_of(plain, opts)
        cfg = stage.config()
        assert cfg["recipe"] == stage.recipe().to_dict() and cfg["method"] == name
    # a parameter of the base method reaches the base pretraining (another key)
    a = Target("dynacl++", preset="smoke").pretrain(opts)
    b = Target("dynacl++", preset="smoke", params={"ema": 0.9}).pretrain(opts)
    assert key_of(a.base, opts) != key_of(b.base, opts)
    # --force: the ++ method's post stage, not the shared base pretraining
    s = target_session(Target("dynacl++", preset="smoke"), Session(force=METHOD_STAGES))
    assert "lpaft" in s.force and "pretrain" not in s.force
    s = target_session(Target("dynacl", preset="smoke"), Session(force=METHOD_STAGES))
    assert "pretrain" in s.force


# ---- the stage: checkpoint, cache --------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_stage(tmp_path_factory):
    """dynacl's smoke pretraining, then dynacl++'s post-processing on it."""
    opts = RunOptions(results=tmp_path_factory.mktemp("pp"), progress=False)
    stage = Target("dynacl++", preset="smoke").pretrain(opts)
    key = run_once(stage, opts)
    return opts, stage, key


def test_stage_checkpoint_keeps_both_branches(smoke_stage):
    opts, stage, key = smoke_stage
    base_path = opts.store.dir("pretrain", key_of(stage.base, opts)) / ENCODER
    path = opts.store.dir("lpaft", key) / ENCODER
    ck, base = load_checkpoint(path, kind="encoder"), load_checkpoint(base_path, kind="encoder")
    assert ck["branches"] == ["normal", "pgd"] and ck["finetune_branch"] == "pgd" and ck["method"] == "dynacl++"
    assert all(k.startswith("encoder.") for k in ck["state_dict"])
    normal = [k for k in ck["state_dict"] if ".bn.normal." in k]
    pgd = [k for k in ck["state_dict"] if ".bn.pgd." in k]
    assert normal and len(normal) == len(pgd)
    assert all(torch.equal(ck["state_dict"][k], base["state_dict"][k]) for k in normal)  # bit for bit
    assert any(not torch.equal(ck["state_dict"][k], base["state_dict"][k]) for k in pgd)
    convs = [k for k in ck["state_dict"] if "conv" in k]
    assert any(not torch.equal(ck["state_dict"][k], base["state_dict"][k]) for k in convs)
    # it loads strictly into SLF/ALF (single-BN 'pgd') and dual-BN AFF models
    encoder, _ = load_encoder(path)
    classifier_from_encoder(encoder, "pgd", 10)
    dual = dual_bn_from_encoder(encoder, "pgd", 10)
    load_strict(dual.encoder, {k[len("encoder."):]: v for k, v in ck["state_dict"].items()})
    info = json.loads((opts.store.dir("lpaft", key) / "done.json").read_text())
    assert info["clusters"] == 10 and sum(info["cluster_sizes"]) == info["n_images"] == 128


def test_stage_is_cached_and_the_base_shared(smoke_stage):
    opts, stage, key = smoke_stage
    done = opts.store.dir("lpaft", key) / "done.json"
    before = done.stat().st_mtime_ns
    base_done = opts.store.dir("pretrain", key_of(stage.base, opts)) / "done.json"
    base_before = base_done.stat().st_mtime_ns
    assert run_once(Target("dynacl++", preset="smoke").pretrain(opts), opts) == key
    assert done.stat().st_mtime_ns == before
    # a plain dynacl run reuses the same pretraining
    assert run_once(Target("dynacl", preset="smoke").pretrain(opts), opts) == key_of(stage.base, opts)
    assert base_done.stat().st_mtime_ns == base_before
    # --force on dynacl++ rebuilds the post stage, not the base
    s = target_session(Target("dynacl++", preset="smoke"), Session(force=METHOD_STAGES))
    assert run_once(Target("dynacl++", preset="smoke").pretrain(opts), opts, s) == key
    assert done.stat().st_mtime_ns != before and base_done.stat().st_mtime_ns == base_before


# ---- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_smoke_run(tmp_path):
    args = ["run", "--method", "dynacl++", "--preset", "smoke", "--quiet", "--attacks", "pgd20", "--json",
            "--results", str(tmp_path)]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    records = json.loads(r.stdout)
    assert sorted(rec["scheme"] for rec in records) == ["aff", "alf", "slf"]
    for rec in records:
        assert rec["method"] == "dynacl++" and set(rec["stages"]) == {"pretrain", "lpaft", "finetune", "evaluate"}
        assert rec["cost"]["postprocess_s"] > 0
        assert any(d.startswith("lp-aft aft_epochs") for d in rec["recipe_deviations"])
    assert len({rec["stages"]["lpaft"] for rec in records}) == 1
    assert Path(tmp_path, "runs", "lpaft", records[0]["stages"]["lpaft"], ENCODER).exists()
    # `acbench pretrain` of a ++ method names the post-processing stage's encoder (cached now)
    r = CliRunner().invoke(main, ["pretrain", "--method", "dynacl++", "--preset", "smoke", "--quiet", "--json",
                                  "--results", str(tmp_path)], catch_exceptions=False)
    info = json.loads(r.stdout)
    assert (info["stage"], info["key"]) == ("lpaft", records[0]["stages"]["lpaft"])
    assert Path(info["checkpoint"]) == Path(tmp_path, "runs", "lpaft", info["key"], ENCODER)


def test_a_base_encoder_without_both_branches_is_a_one_line_error(tmp_path):
    """prepare() (run before anything is written) names the file and the missing branch."""
    opts = RunOptions(results=tmp_path, progress=False)
    stage = Target("dynacl++", preset="smoke").pretrain(opts)
    base_key = key_of(stage.base, opts)
    cfg = BackboneConfig("resnet10-tiny", 1)
    enc = ResNet(cfg, branches=("normal",))
    path = opts.store.dir("pretrain", base_key) / ENCODER
    path.parent.mkdir(parents=True)
    save_checkpoint(path, "encoder", {"method": "dynacl", "backbone": cfg.to_dict(), "branches": ["normal"],
                                      "finetune_branch": "normal",
                                      "state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()}})
    with pytest.raises(CheckpointError, match=r"encoder\.pt: dual-BN finetuning needs BN branches 'normal' and 'pgd'"):
        stage.prepare(opts, {"pretrain": base_key})
    assert not (tmp_path / "runs" / "lpaft").exists()
