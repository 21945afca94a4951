"""RCS (methods/rcs.py): the selection's KLd, validation objective, training-gradient sketch and
greedy pick against a re-derivation of the released formulas (GodXuxilie/Efficient_ACL_via_RCS
``RCS.py``), the pretraining objective (dynacl-air's at half scale without regularisers), the
budget and the schedule, the loop's epoch hook (subset epochs, learning rate following epoch
progress, records, resume), pass counts per step and per selection, the fraction error through the
CLI, and a smoke run."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import CPU, pretrain_config, random_data, training
from test_dynacl import interleave, nt_xent_released

import benchmark.pretrain as pretrain
from benchmark.cli import main
from benchmark.config import get_preset
from benchmark.errors import AcbenchError
from benchmark.io import load_checkpoint
from benchmark.perf import PerfBench
from benchmark.perf_measure import PassCounter
from benchmark.pretrain import run_pretrain
from methods import get_method
from methods.base import EpochContext, subset_steps
from methods.rcs import (
    coreset_kl,
    epoch_kind,
    greedy_batches,
    head_weights,
    pool_loss,
    progress_cosine,
    schedule_epochs,
    selection_budget,
    sketch,
    validation_loss,
    validation_rows,
)

NAMES = ("dynacl-rcs", "acl-rcs")


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- re-derivations of RCS.py, element by element ------------------------------------------------------


def kl_ref(adv: torch.Tensor, nat: torch.Tensor) -> torch.Tensor:
    """``kl_loss(nat=adv, adv=nat)``: per row, normalize() (minus the row's min, over the new max),
    + 1e-8; KLDivLoss(log P, Q, 'mean') = sum Q (log Q - log P) / (rows x columns)."""
    total = 0
    for a, b in zip(adv, nat):
        a = a - torch.min(a)
        q = a / torch.max(a) + 1e-8
        b = b - torch.min(b)
        p = b / torch.max(b) + 1e-8
        total = total + sum(q[i] * (torch.log(q[i]) - torch.log(p[i])) for i in range(len(q)))
    return total / adv.numel()


def head_ref(head, w: list[torch.Tensor], h: torch.Tensor, branch: str) -> torch.Tensor:
    """``proj_head.forward`` in eval mode: fc1 (bias) - bn1 - relu - fc2 - bn2 - relu - fc3 - bn3,
    with the weights ``w`` = [fc1.weight, fc1.bias, fc2.weight, fc3.weight]."""
    def bn(i, x):
        m = head.norms[i].bn[branch]
        return (x - m.running_mean) / torch.sqrt(m.running_var + m.eps) * m.weight + m.bias

    x = torch.relu(bn(0, h @ w[0].T + w[1]))
    x = torch.relu(bn(1, x @ w[2].T))
    return bn(2, x @ w[3].T)


def tiny_head(d: int = 6, seed: int = 0):
    """The method's released head on d-dim features, float64, eval mode, random BN statistics."""
    torch.manual_seed(seed)
    head = get_method("dynacl-rcs").build_head(d).double().eval()
    for norm in head.norms:
        for bn in norm.bn.values():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
    return head


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


# ---- the formulas --------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
@pytest.mark.parametrize("rows,cols", [(1, 5), (4, 7), (9, 3)])
def test_kld_is_the_released_min_max_kl(rows, cols):
    a0, n0 = rand(rows, cols, seed=rows), rand(rows, cols, seed=100 + rows)
    a1, n1 = a0.clone().requires_grad_(True), n0.clone().requires_grad_(True)
    a2, n2 = a0.clone().requires_grad_(True), n0.clone().requires_grad_(True)
    v1, v2 = coreset_kl(a1, n1), kl_ref(a2, n2)
    g1, g2 = _grads(v1, [a1, n1]), _grads(v2, [a2, n2])
    assert abs(v1.item() - v2.item()) < 1e-12
    for x, y in zip(g1, g2):
        assert y.abs().max() > 1e-8 and (x - y).abs().max() < 1e-10
    # the released reduction: F.kl_div's element mean, not batchmean; and not a softmax
    assert v1.item() == pytest.approx(F.kl_div(
        torch.log((n0 - n0.min(1, keepdim=True)[0]) / (n0.max(1, keepdim=True)[0] - n0.min(1, keepdim=True)[0]) + 1e-8),
        (a0 - a0.min(1, keepdim=True)[0]) / (a0.max(1, keepdim=True)[0] - a0.min(1, keepdim=True)[0]) + 1e-8,
        reduction="mean").item(), abs=1e-12)


def test_validation_objective_and_its_1537_d_sketch_shape():
    head = tiny_head()
    h, h_adv = rand(10, 6, seed=1), rand(10, 6, seed=2)
    w = head_weights(head)
    v1 = validation_loss(head, h, h_adv)
    w_ref = [t.detach().clone().requires_grad_(True) for t in w]
    v2 = kl_ref(head_ref(head, w_ref, h_adv, "pgd"), head_ref(head, w_ref, h, "normal"))
    g1, g2 = _grads(v1, w), _grads(v2, w_ref)
    assert abs(v1.item() - v2.item()) < 1e-12
    for x, y in zip(g1, g2):
        assert y.abs().max() > 1e-9 and (x - y).abs().max() < 1e-10
    # the sketch: each gradient's mean over its first axis (the output rows), concatenated
    s = sketch(g1)
    ref = torch.cat([g1[0].sum(0) / 6, g1[1].sum().reshape(1) / 6, g1[2].sum(0) / 6, g1[3].sum(0) / 6])
    assert s.shape == (6 + 1 + 6 + 6,) and (s - ref).abs().max() < 1e-14
    big = get_method("dynacl-rcs").build_head(512)
    assert sketch([torch.zeros_like(t) for t in head_weights(big)]).numel() == 1537


@pytest.mark.parametrize("k", [2, 4])
def test_training_gradient_is_the_released_plain_acl_loss_on_the_head(k):
    head = tiny_head(seed=3)
    h, h_adv = rand(2 * k, 6, seed=10 + k), rand(2 * k, 6, seed=20 + k)  # view 1 rows, then view 2
    w = head_weights(head)
    v1 = pool_loss(head, h, h_adv)
    w_ref = [t.detach().clone().requires_grad_(True) for t in w]
    z, z_adv = head_ref(head, w_ref, h, "normal"), head_ref(head, w_ref, h_adv, "pgd")
    v2 = 0.5 * (nt_xent_released(interleave(z[:k], z[k:])) + nt_xent_released(interleave(z_adv[:k], z_adv[k:])))
    g1, g2 = _grads(v1, w), _grads(v2, w_ref)
    assert abs(v1.item() - v2.item()) < 1e-12
    for x, y in zip(g1, g2):
        assert (x - y).abs().max() < 1e-10
    assert max(y.abs().max() for y in g2) > 1e-6


def greedy_ref(G, count, gval, step):
    """``RCS.py:310-366`` as written: index_list, argmax of the gains, del_tensor_ele."""
    index_list, out = list(range(G.shape[0])), []
    for j in range(count):
        gains = [float(G[i] @ gval) for i in index_list]
        r = gains.index(max(gains))
        out.append(index_list[r])
        if j == count - 1:
            break
        gval = step(index_list[r])
        index_list = index_list[:r] + index_list[r + 1:]
    return out


@pytest.mark.parametrize("count", [1, 3, 6])
def test_greedy_pick_is_the_released_one(count):
    G, g0 = rand(6, 5, seed=count), rand(5, seed=50)
    steps = []

    def step(b):  # a stand-in for the simulated head step: the sketch moves against batch b
        steps.append(b)
        return g0 - 0.7 * len(steps) * G[b]

    ours = greedy_batches(G, count, g0, step)
    taken, steps[:] = list(steps), []
    assert ours == greedy_ref(G, count, g0, step) and taken == steps
    assert len(ours) == len(set(ours)) == count and len(taken) == count - 1  # no step after the last pick
    tie = torch.zeros(3, 2, dtype=torch.float64)
    assert greedy_batches(tie, 2, torch.ones(2, dtype=torch.float64), lambda b: torch.ones(2, dtype=torch.float64)) == [0, 1]


def test_validation_rows_half_used_and_duplicated():
    assert validation_rows(5, 512).tolist() == [0, 0, 1, 1, 2]  # view(2B)[:B] of one batch of 5
    assert validation_rows(6, 4).tolist() == [0, 0, 1, 1, 4, 4]  # per loader batch: [0..3], [4, 5]
    assert validation_rows(5, 512, "all").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(AcbenchError):
        validation_rows(5, 512, "half")


# ---- the objective ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("epoch", [1, 51, 990])
def test_objective_is_dynacl_air_at_half_scale_without_regularisers(n, epoch):
    rcs, air = get_method("dynacl-rcs"), get_method("dynacl-air", lambda1=0.0, lambda2=0.0)
    assert rcs.strength(epoch, 1000) == air.strength(epoch, 1000)
    w = rcs.adv_weight(epoch, 1000)
    assert w == air.adv_weight(epoch, 1000)
    u0 = rand(5, n, 8, seed=n + epoch)

    def grads(fn):
        u = u0.clone().requires_grad_(True)
        v = fn(F.normalize(u, dim=-1))
        return v.detach(), torch.autograd.grad(v, u)[0]

    v1, g1 = grads(lambda z: rcs.loss(torch.cat([z[0], z[1]]), torch.cat([z[3], z[4]]), n, w)[0])
    v2, g2 = grads(lambda z: 0.5 * air.loss(torch.cat([z[0], z[1]]), torch.cat([z[3], z[4]]), z[2], w)[0])
    assert abs(v1.item() - v2.item()) < 1e-12 and (g1 - g2).abs().max() < 1e-12
    v3, _ = grads(lambda z: 0.5 * ((1 - w) * nt_xent_released(interleave(z[0], z[1]))
                                   + (1 + w) * nt_xent_released(interleave(z[3], z[4]))))
    assert abs(v1.item() - v3.item()) < 1e-10


def test_acl_rcs_is_the_plain_half_sum():
    m = get_method("acl-rcs")
    assert all(m.strength(e, 1000) == 1.0 and m.adv_weight(e, 1000) == 0.0 for e in (1, 500, 1000))
    assert m.params.train_on_validation is False and get_method("dynacl-rcs").params.train_on_validation is True


# ---- budget and schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction,batches", [(0.2, 19), (0.1, 9), (0.05, 4)])
def test_budget_in_whole_batches_on_cifar(fraction, batches):
    budget, count = selection_budget(50000, fraction, 512)
    assert budget == int(49500 * fraction) and count == batches
    assert count * 512 == {0.2: 9728, 0.1: 4608, 0.05: 2048}[fraction]
    assert selection_budget(1257, 0.2, 128) == (248, 1)  # digits quick: 1 batch of 128
    assert selection_budget(1257, 0.2, 512) == (248, 1)  # 0 in the release (it then crashes): at least 1


def test_subset_steps_keep_a_last_partial_batch_of_two_or_more():
    assert [subset_steps(n, 8) for n in (8, 9, 10, 16, 106)] == [1, 1, 2, 2, 14]
    assert subset_steps(105, 128) == 1  # quick: the pool's last batch (105 of 1,257) picked


def test_released_schedule():
    w, f = schedule_epochs(1000, 0.1, 0.02)
    assert (w, f) == (100, 20)
    kinds = [epoch_kind(e, w, f) for e in range(1, 1001)]
    selects = [e for e, k in zip(range(1, 1001), kinds) if k == "select"]
    assert kinds[:100] == ["full"] * 100 and selects[:3] == [101, 121, 141] and selects[-1] == 981
    assert len(selects) == 45 and kinds.count("reuse") == 900 - 45
    assert schedule_epochs(20, 0.1, 0.02) == (2, 1)  # quick: 2 full epochs, then a selection every epoch
    assert schedule_epochs(1, 0.1, 0.02) == (0, 1) and epoch_kind(1, 0, 1) == "select"


def test_recipe_notes_say_how_a_preset_scales_the_schedule():
    m = get_method("dynacl-rcs", dataset="digits")
    paper = m.paper_recipe("cifar10")
    assert m.recipe_notes(paper) == []
    notes = m.recipe_notes(get_preset("quick").recipe(paper))
    assert notes == ["RCS schedule: selections from epoch 2 every 1 epochs (paper: 100, every 20)",
                     "RCS selection batch 128 (paper 512)"]
    assert get_method("acl").recipe_notes(paper) == []


def test_learning_rate_follows_epoch_progress_as_released():
    """The release rebuilds its cosine (warm-up 10 L steps of E L) from the epoch's loader length L
    and fast-forwards (e - 1) L steps, then steps before each update."""
    m = get_method("dynacl-rcs", dataset="cifar10")
    recipe, E = m.paper_recipe("cifar10"), 1000
    f = m.lr_lambda(recipe, 97, 97 * E)

    def released(step, L):  # cosine_annealing(step, E L, 1, 1e-6 / 5, 10 L)
        if step < 10 * L:
            return step / (10 * L)
        return 2e-7 + (1 - 2e-7) * 0.5 * (1 + np.cos((step - 10 * L) / (E * L - 10 * L) * np.pi))

    for epoch, start, L in [(1, 0, 97), (5, 388, 97), (101, 9700, 19), (600, 9700 + 499 * 19, 19)]:
        m._plan = (epoch, start, L)
        for j in (0, 7, L - 1):
            assert f(start + j) == pytest.approx(released((epoch - 1) * L + j + 1, L), rel=1e-9, abs=1e-15)
    assert progress_cosine(0.5, 10, 1.0, 0.0) == 0.5


@pytest.mark.parametrize("bad", [dict(fraction=0), dict(fraction=1.5), dict(fraction=-0.1), dict(warmup=2.0),
                                 dict(fre=0.0), dict(validation=0.0), dict(selection_batch=-1),
                                 dict(coreset_attack_steps=0), dict(validation_rows="half")])
def test_params_validate_themselves(bad):
    with pytest.raises(AcbenchError):
        get_method("dynacl-rcs", **bad)


def test_paper_recipe_and_description():
    d = get_method("dynacl-rcs", dataset="cifar10").describe()
    r = d["paper_recipe"]
    assert (r["epochs"], r["batch_size"], r["optimizer"], r["lr"], r["warmup_epochs"]) == (1000, 512, "lars", 5.0, 10)
    assert d["params"]["fraction"] == 0.2 and d["params"]["coreset_lr_steps"] == 2 and d["finetune_branch"] == "pgd"


# ---- the selection -------------------------------------------------------------------------------------


def _context(tr, seed=0, step=0):
    return EpochContext(model=tr.model, images=tr.images, device=CPU, batch_size=tr.batch_size, seed=seed,
                        step=step, autocast=tr.autocast)


def _selection(name="dynacl-rcs", n=24, batch=8, seed=0, **params):
    tr = training(name, n=n, batch_size=batch, attack_steps=2, **params)
    tr.model.train()
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    chosen, info = tr.method.select(101, 1000, _context(tr, seed))
    return tr, chosen, info, before


@pytest.mark.parametrize("name", NAMES)
def test_selection_picks_whole_batches_and_restores_the_head(name):
    tr, chosen, info, before = _selection(name, fraction=0.7)
    m = tr.method
    train, val, _ = m.split(24, 0)
    assert len(train) == 23 and val.tolist() == sorted(set(range(24)) - set(train.tolist()))
    assert info["selected_batches"] == int(23 * 0.7) // 8 == 2 and info["pool_batches"] == 3
    assert len(set(chosen.tolist())) == len(chosen)
    if name == "acl-rcs":  # the pool is the 99 %: 23 images in batches 8, 8, 7 (the partial one may be picked)
        assert set(chosen.tolist()) <= set(train.tolist()) and len(chosen) in (15, 16)
    else:  # the pool is every image, validation included: 3 batches of 8
        assert len(chosen) == 16
    state = tr.model.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in state)  # head restored, BN statistics untouched
    assert tr.model.training  # mode restored


def test_selection_is_deterministic_under_the_seed():
    _, a, _, _ = _selection()
    _, b, _, _ = _selection()
    assert torch.equal(a, b)
    torch.manual_seed(123)  # the global stream does not matter: the selection forks its own
    _, c, _, _ = _selection()
    assert torch.equal(a, c)


@pytest.mark.parametrize("steps", [2, 1])
def test_the_simulated_head_step_is_applied_twice_as_released(monkeypatch, steps):
    """Between two picks the head moves by coreset_lr_steps x lr x (the picked batch's gradient):
    0.02 effective as released (2 x 0.01), lr with coreset_lr_steps=1; restored afterwards."""
    tr = training("dynacl-rcs", n=24, batch_size=8, attack_steps=2, fraction=1.0, coreset_lr_steps=steps)
    m = tr.method
    grads, images, weights = [], [], []
    batch_gradient, validation_gradient = m.batch_gradient, m.validation_gradient

    def bg(model, x, context):
        images.append(x.clone())
        grads.append(batch_gradient(model, x, context))
        return grads[-1]

    def vg(model, x, batch, context):
        weights.append([t.detach().clone() for t in head_weights(model.head)])
        return validation_gradient(model, x, batch, context)

    monkeypatch.setattr(m, "batch_gradient", bg)
    monkeypatch.setattr(m, "validation_gradient", vg)
    before = [t.detach().clone() for t in head_weights(tr.model.head)]
    chosen, _ = m.select(101, 1000, _context(tr))
    (b,) = [i for i, x in enumerate(images) if torch.equal(x, tr.images[chosen[: len(x)]])]
    assert len(weights) == 2  # the first validation gradient, and one after the first pick
    for w0, w1, g in zip(weights[0], weights[1], grads[b]):
        assert torch.allclose(w1, w0 - steps * 0.01 * g, atol=1e-7) and g.abs().max() > 0
    assert all(torch.equal(t, s) for t, s in zip(head_weights(tr.model.head), before))


def test_passes_per_selection():
    """Per pool image: PGD-K on two views (2K forwards, 2K input backwards) and 4 feature forwards
    (two views, clean and adversarial);
    per validation row and greedy round: 1 clean feature forward, K' PGD forwards and input
    backwards, 1 adversarial feature forward. The head's gradients reach no encoder."""
    tr = training("dynacl-rcs", n=24, batch_size=8, attack_steps=2, fraction=1.0)
    k, kv = 2, tr.method.params.coreset_attack_steps
    rounds = selection_budget(24, 1.0, 8)[1]  # 2: one greedy step between the picks
    rows = len(validation_rows(1, 8))
    with PassCounter(tr.model.encoder.conv1) as passes:
        tr.method.select(101, 1000, _context(tr))
    assert passes.forward == 24 * (2 * k + 4) + rounds * rows * (kv + 2)
    assert passes.input_backward == 24 * 2 * k + rounds * rows * kv
    assert passes.weight_backward == 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [2, 5])
def test_passes_per_step(name, k):
    """The training step is ACL's: 2K attack forwards and input backwards, 4 views forward and backward."""
    bench = PerfBench(name, "smoke", batch_size=4, device="cpu", params={"attack_steps": k})
    _, passes = bench.count(bench.harness_step)
    assert passes == {"forward": 2 * k + 4, "input_backward": 2 * k, "weight_backward": 4}


# ---- the loop's epoch hook ------------------------------------------------------------------------------


def _config(epochs=4, **params):
    cfg = pretrain_config("dynacl-rcs", attack_steps=1, **params)
    return dataclasses.replace(cfg, recipe=cfg.recipe.replace(epochs=epochs, warmup_epochs=1, warmup_start=0.0))


def test_subset_epochs_in_the_loop(tmp_path, monkeypatch):
    """E = 4, W = 2, F = 3: epochs 1-2 full, 3 reuses the coreset's initial random pick (no selection
    yet, as released), 4 selects; each update runs at the factor of its epoch's progress; the history
    and the summary record the subsets."""
    cfg = _config(warmup=0.5, fre=0.75, fraction=0.6)
    seen = []
    original = pretrain.Training.step

    def spy(self, idx, epoch, i, log, step=None):
        seen.append((epoch, step, self.optimizer.param_groups[0]["lr"], len(idx)))
        return original(self, idx, epoch, i, log, step=step)

    monkeypatch.setattr(pretrain.Training, "step", spy)
    out = run_pretrain(cfg, random_data(24, cfg.image_size), tmp_path, CPU, progress=False)
    history = json.loads((tmp_path / "history.json").read_text())
    # 24 images, batch 8: 3 full steps; budget int(23 * 0.6) = 13 images (2 steps: 8 and 5), 1 batch of 8
    assert [e.get("steps") for e in history] == [None, None, 2, 1]
    assert [e.get("images") for e in history] == [None, None, 13, 8]
    assert [s[0] for s in seen] == [1, 1, 1, 2, 2, 2, 3, 3, 4] and [s[1] for s in seen] == list(range(9))
    assert [s[3] for s in seen] == [8] * 7 + [5, 8]  # a subset keeps its last partial batch
    lr = cfg.recipe.lr
    expected = [progress_cosine(p, 4, 1, cfg.recipe.min_lr_ratio) * lr
                for p in (1 / 3, 2 / 3, 1, 1 + 1 / 3, 1 + 2 / 3, 2, 2 + 1 / 2, 2 + 1, 3 + 1)]
    assert [s[2] for s in seen] == pytest.approx(expected, rel=1e-9)
    assert out["steps"] == 9 and [s["epoch"] for s in out["subsets"]] == [4]
    assert out["subsets"][0]["images"] == 8 and out["subsets"][0]["selected_batches"] == 1


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    """Same config and seed: the same subsets and weights, also across a resume into an epoch that
    reuses the last selection (E = 4, W = 1, F = 2: selections at epochs 1 and 3)."""
    cfg = _config(warmup=0.25, fre=0.5, fraction=0.6)
    data = random_data(24, cfg.image_size)
    a = run_pretrain(cfg, data, tmp_path / "a", CPU, progress=False)

    def stop(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pretrain(cfg, data, tmp_path / "b", CPU, progress=False, on_epoch_end=stop)
    b = run_pretrain(cfg, data, tmp_path / "b", CPU, progress=False)
    sa = load_checkpoint(tmp_path / "a" / "encoder.pt", kind="encoder")["state_dict"]
    sb = load_checkpoint(tmp_path / "b" / "encoder.pt", kind="encoder")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [s["epoch"] for s in a["subsets"]] == [1, 3]
    assert [{k: v for k, v in s.items() if k != "selection_seconds"} for s in a["subsets"]] == [
        {k: v for k, v in s.items() if k != "selection_seconds"} for s in b["subsets"]]


# ---- the CLI --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_a_fraction_outside_0_1_is_a_one_line_error_and_nothing_is_written(tmp_path, value):
    results = tmp_path / "results"
    r = CliRunner().invoke(main, ["run", "--method", "dynacl-rcs", "--preset", "smoke", "--quiet", "--param",
                                  f"fraction={value}", "--results", str(results)])
    assert r.exit_code != 0
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "fraction must be in (0, 1], got" in lines[0] and value in lines[0]
    assert not (results / "runs").exists()


@pytest.mark.slow
def test_smoke_run_through_the_cli(tmp_path):
    r = CliRunner().invoke(main, ["run", "--method", "dynacl-rcs", "--preset", "smoke", "--quiet", "--attacks",
                                  "pgd20", "--schemes", "slf", "--json", "--results", str(tmp_path / "results")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(r.stdout)
    assert rec["method"] == "dynacl-rcs" and rec["method_params"]["fraction"] == 0.2
    assert 0 <= rec["metrics"]["clean"] <= 100
    (done,) = (tmp_path / "results").glob("runs/pretrain/*/done.json")
    summary = json.loads(done.read_text())
    # smoke: 1 epoch (W = 0, F = 1: a selection at epoch 1), 128 images, batch 32: 1 batch
    assert [(s["epoch"], s["images"], s["steps"]) for s in summary["subsets"]] == [(1, 32, 1)]
    assert math.isfinite(summary["final_loss"])
