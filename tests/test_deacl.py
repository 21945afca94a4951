"""DeACL (Zhang et al., ECCV 2022; pantheon5100/DeACL, ``solo/methods/mocov2_distillation_AT.py``):
the loss and the attack objective against re-derivations of the released formulas (value and
gradient, fp64), the attack's released steps, one training step on synthetic data, the passes per
step, the teacher stage (strict loading, one-line errors, nothing written) and a CLI smoke run
that trains the teacher and then DeACL."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from click.testing import CliRunner

from benchmark.checkpoints import load_classifier
from benchmark.cli import main
from benchmark.config import get_preset
from benchmark.errors import AcbenchError, ConfigError
from benchmark.io import save_checkpoint
from benchmark.models import (
    BackboneConfig,
    CheckpointMismatch,
    NoHead,
    branch_state_dict,
    classifier_from_encoder,
)
from benchmark.perf_measure import PassCounter, forward_equivalents
from benchmark.pretrain import EpochLog, build_training
from benchmark.stage import RunOptions, run_once
from benchmark.stages import UPSTREAM, PretrainStage
from benchmark.teacher import TEACHER, TeacherStage, read_teacher
from methods import get_method, list_methods
from methods.deacl import (
    branch_keys,
    build_teacher,
    deacl_attack_objective,
    deacl_loss,
    deacl_pgd,
    stand_in_teacher,
)
from tests.helpers import CPU, pretrain_config, random_data

SMOKE = get_preset("smoke")


def _features(b: int, d: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, d, generator=g, dtype=torch.float64) * 3).requires_grad_(True) for _ in range(3)]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_i, b_i) written out, one row at a time."""
    return torch.stack([(a[i] * b[i]).sum() / (a[i].square().sum().sqrt() * b[i].square().sum().sqrt())
                        for i in range(a.shape[0])])


def _released_loss(f_clean, f_adv, target, k):
    """mocov2_distillation_AT.py:222-235: adv_loss = -cos(clean, away_target).mean();
    adv_loss += -trades_k * cos(AE, clean).mean(), nothing detached."""
    return -_cos(f_clean, target).mean() - k * _cos(f_adv, f_clean).mean()


def _grads(value, inputs):
    return torch.autograd.grad(value, inputs, allow_unused=True, retain_graph=True)


# ---- the loss and the attack objective --------------------------------------------------------


@pytest.mark.parametrize("b,d,k", [(2, 4, 2.0), (5, 8, 2.0), (16, 32, 0.5)])
def test_loss_value_and_gradient_match_the_released_formula(b, d, k):
    f_clean, f_adv, target = _features(b, d, seed=b)
    loss, distill, robust = deacl_loss(f_clean, f_adv, target, k)
    ref = _released_loss(f_clean, f_adv, target, k)
    torch.testing.assert_close(loss, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, distill + k * robust, rtol=0, atol=1e-12)
    for g, r in zip(_grads(loss, [f_clean, f_adv, target]), _grads(ref, [f_clean, f_adv, target])):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)
    # f_S(x) carries gradient through both terms: detaching it in the robustness term changes it
    detached = -_cos(f_clean, target).mean() - k * _cos(f_adv, f_clean.detach()).mean()
    g_loss, g_detached = _grads(loss, [f_clean])[0], _grads(detached, [f_clean])[0]
    assert (g_loss - g_detached).abs().max() > 1e-2 * g_loss.abs().max()


def test_the_method_uses_the_released_trades_k_and_sign():
    f_clean, f_adv, target = _features(6, 8, seed=1)
    m = get_method("deacl")
    assert m.params.trades_k == 2.0
    loss = deacl_loss(f_clean, f_adv, target, m.params.trades_k)[0]
    torch.testing.assert_close(loss, _released_loss(f_clean, f_adv, target, 2.0), rtol=0, atol=1e-12)
    # identical features everywhere: -1 - k
    same = torch.ones(3, 4, dtype=torch.float64)
    assert deacl_loss(same, same, same, 2.0)[0].item() == pytest.approx(-3.0)


@pytest.mark.parametrize("b,d", [(3, 4), (16, 32)])
def test_attack_objective_value_and_gradient_match_the_released_formula(b, d):
    f_adv, target, _ = _features(b, d, seed=10 + b)
    value = deacl_attack_objective(f_adv, target)
    ref = -_cos(f_adv, target).sum() * 256  # the release's objective with its fp16 factor
    torch.testing.assert_close(value * 256, ref, rtol=1e-12, atol=1e-10)
    (g,), (g_ref,) = _grads(value, [f_adv]), _grads(ref, [f_adv])
    torch.testing.assert_close(g * 256, g_ref, rtol=1e-12, atol=1e-10)
    assert torch.equal(g.sign(), g_ref.sign())  # the attack's step: the factor changes nothing


def _released_pgd(objective, image, eps, alpha, steps):
    """mocov2_distillation_AT.py:287-326, transcribed: start x + U(-eps, eps) (no clamp), then per
    step a sign step, min/max to the eps-ball around x and clamp to [0, 1]."""
    x_cl = image.clone().detach()
    x_cl = x_cl + torch.zeros_like(image).uniform_(-eps, eps)
    for _ in range(steps):
        x_cl.requires_grad_()
        with torch.enable_grad():
            loss = objective(x_cl) * 256
        grad = torch.autograd.grad(loss, x_cl)[0]
        x_cl = x_cl.detach() + alpha * torch.sign(grad.detach())
        x_cl = torch.min(torch.max(x_cl, image - eps), image + eps)
        x_cl = torch.clamp(x_cl, 0, 1)
    return x_cl


def test_pgd_is_the_released_attack():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64)
    x[:, :, :2] = 0.0  # pixels at the box edge: the start leaves [0, 1] there
    w = torch.randn(3 * 8 * 8, 5, generator=g, dtype=torch.float64)
    target = torch.randn(6, 5, generator=g, dtype=torch.float64)

    def objective(a):
        return deacl_attack_objective(torch.tanh(a.flatten(1) @ w), target)

    seen = []

    def spy(a):
        seen.append(a.detach().clone())
        return objective(a)

    eps, alpha = 8 / 255, 2 / 255
    torch.manual_seed(5)
    ours = deacl_pgd(spy, x, eps, alpha, 5)
    torch.manual_seed(5)
    ref = _released_pgd(objective, x, eps, alpha, 5)
    assert torch.equal(ours, ref)
    assert seen[0].min() < 0  # the released start is not clipped
    assert (ours - x).abs().max() <= eps + 1e-12 and ours.min() >= 0 and ours.max() <= 1
    assert objective(ours) > objective(x)
    seen.clear()
    torch.manual_seed(5)
    deacl_pgd(spy, x, eps, alpha, 5, start="clipped")
    assert seen[0].min() >= 0


# ---- one step ---------------------------------------------------------------------------------


def _training(n=16, batch_size=8, **params):
    cfg = pretrain_config("deacl", batch_size=batch_size, **params)
    data = random_data(n, cfg.image_size or 16)
    backbone = BackboneConfig(cfg.backbone, data.channels, data.mean, data.std)
    teacher = stand_in_teacher(backbone, seed=3)
    return build_training(cfg, data, CPU, {"teacher": teacher}), teacher


def test_one_step_on_synthetic_data():
    tr, teacher = _training()
    m, model = tr.method, tr.model
    assert isinstance(model.head, NoHead) and not list(model.head.parameters()) and m.branches == ("normal",)
    student = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    for k, v in branch_keys(teacher["state_dict"], "normal").items():  # the student starts as the teacher
        assert torch.equal(student[k], v), k
    teacher_before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    tracked = model.encoder.bn1.bn["normal"].num_batches_tracked.item()

    # the loss the step computes, from the same random stream
    idx = torch.arange(8)
    images = tr.images[idx].float() / 255
    torch.manual_seed(11)
    x = m.weak(images)
    with torch.no_grad():
        t = m.teacher(x)
    x_adv = m.attack(model, x, t)
    assert (x_adv - x).abs().max() <= m.params.eps + 1e-6
    model.train()
    f_clean, f_adv = model.features(torch.cat([x, x_adv]), "normal").chunk(2)
    expected = _released_loss(f_clean.double(), f_adv.double(), t.double(), 2.0)
    model.encoder.load_state_dict(student)

    log = EpochLog(1, CPU)
    torch.manual_seed(11)
    tr.step(idx, 1, 0, log)
    assert log.losses[0].item() == pytest.approx(expected.item(), abs=1e-5)
    assert set(log.sums) == {"loss", "distill", "robust"}
    # one train-mode forward per step (the attack runs in eval mode): BN saw [x; x_adv] once
    assert model.encoder.bn1.bn["normal"].num_batches_tracked.item() == tracked + 1
    # the teacher: no gradient, never updated
    assert all(p.grad is None and not p.requires_grad for p in m.teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in m.teacher.state_dict().items())
    assert not m.teacher.training
    # the student moved
    assert any(not torch.equal(v, student[k]) for k, v in model.encoder.state_dict().items() if "conv" in k)


def test_solo_learns_padding_2_stem_in_student_teacher_and_classifier():
    """Both stages build solo-learn's CIFAR stem, conv1 3x3 stride 1 padding 2, as released
    (``stem_padding=1``: acbench's other methods' stem); the ImageNet stem is left as it is."""
    tr, _ = _training()
    assert tr.model.encoder.conv1.padding == (2, 2) and tr.method.teacher.conv1.padding == (2, 2)
    assert tr.model.encoder.config.to_dict()["stem_padding"] == 2  # what encoder.pt stores
    clf = classifier_from_encoder(tr.model.encoder, "normal", 10)  # finetuned with the same stem
    assert clf.encoder.conv1.padding == (2, 2)
    for name in ("deacl", "deacl-teacher"):
        assert get_method(name).build_model(BackboneConfig("resnet10-tiny")).encoder.conv1.padding == (2, 2)
        one = get_method(name, stem_padding=1).build_model(BackboneConfig("resnet10-tiny")).encoder
        assert one.conv1.padding == (1, 1) and "stem_padding" not in one.config.to_dict()
        stl = get_method(name).build_model(BackboneConfig("resnet18-imagenet")).encoder
        assert stl.conv1.padding == (3, 3) and stl.config.stem_padding == 1
    assert get_method("acl").build_model(BackboneConfig("resnet10-tiny")).encoder.conv1.padding == (1, 1)


def test_one_bn_sees_clean_and_adversarial_together():
    tr, _ = _training()
    seen = []
    handle = tr.model.encoder.conv1.register_forward_hook(
        lambda mod, args, out: seen.append((tr.model.training, args[0].shape[0])))
    tr.step(torch.arange(8), 1, 0, EpochLog(1, CPU))
    handle.remove()
    k = tr.method.params.attack_steps
    assert seen == [(False, 8)] * k + [(True, 16)]


def test_student_init_scratch_and_the_views():
    tr, teacher = _training(student_init="scratch")
    w = tr.model.encoder.conv1.weight
    assert not torch.equal(w, teacher["state_dict"]["conv1.weight"])
    assert torch.equal(tr.method.teacher.conv1.weight, teacher["state_dict"]["conv1.weight"])
    assert tr.method.weak.padding == 16 // 8 and tr.method.weak.flip  # RandomCrop(pad size/8) + flip
    assert _training(crop_padding=1)[0].method.weak.padding == 1


def test_a_step_never_reads_a_device_value():
    """As tests/test_fastpath.py checks for the other methods: a whole step runs on the meta
    device, where any host sync raises; the teacher arrives as a stand-in made for the student."""
    meta = torch.device("meta")
    cfg = pretrain_config("deacl")
    tr = build_training(cfg, random_data(16), meta, {"teacher": functools.partial(stand_in_teacher, seed=1)})
    assert tr.method.teacher.conv1.weight.device.type == "meta"
    tr.model.train()
    log = EpochLog(1, meta)
    tr.step(torch.arange(8, device=meta), 1, 0, log)
    assert log.losses.device.type == "meta"
    assert all(p.grad is not None for p in tr.model.encoder.parameters())


def test_deacl_needs_its_teacher():
    with pytest.raises(ConfigError, match="needs its teacher"):
        build_training(pretrain_config("deacl"), random_data(16), CPU, {})
    assert get_method("deacl").requires == ("teacher",) and get_method("deacl-teacher").requires == ()
    assert "teacher" in UPSTREAM


# ---- passes per step --------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 5])
def test_passes_per_step(k):
    """Per image: the teacher 1 forward (no backward); the student K attack forwards + K input-only
    backwards, then one forward and weight backward on [x; x_adv] (2 images): 2K + 6 student
    forward-equivalents (16 at K = 5; +1 teacher forward = 17 = 22 units). WAVE2.md 7 counts 25
    units for the release: + 2 for the teacher's discarded backward, + 1 for the monitor's forward."""
    tr, _ = _training(attack_steps=k)
    b = 8
    with PassCounter(tr.model.encoder.conv1) as student, PassCounter(tr.method.teacher.conv1) as teacher:
        tr.step(torch.arange(b), 1, 0, EpochLog(1, CPU))
    s, t = student.per_image(b), teacher.per_image(b)
    assert s == {"forward": k + 2, "input_backward": k, "weight_backward": 2}
    assert t == {"forward": 1, "input_backward": 0, "weight_backward": 0}
    assert forward_equivalents(s) + forward_equivalents(t) == 2 * k + 7


def test_paper_recipes():
    r = get_method("deacl").paper_recipe("cifar10")
    assert (r.epochs, r.batch_size, r.optimizer, r.lr, r.momentum, r.weight_decay) == (100, 256, "sgd", 0.5, 0.9, 5e-4)
    assert r.warmup_epochs == 10 and r.lr * r.warmup_start == pytest.approx(0.003) and r.min_lr_ratio == 0
    t = get_method("deacl-teacher").paper_recipe("cifar10")
    assert (t.epochs, t.batch_size, t.optimizer, t.lr, t.weight_decay) == (1000, 256, "lars", 0.4, 1e-5)
    assert dict(t.optimizer_options) == {"eta": 0.02, "eps": 1e-8, "exclude_bias_and_bn": True,
                                         "lr_in_momentum": False, "clip_lr": True}  # solo-learn's LARS
    from benchmark.optim import build_optimizer

    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), t.optimizer, t.lr, t.momentum, t.weight_decay,
                          **dict(t.optimizer_options))
    assert opt.defaults["clip_lr"] is True and opt.defaults["eta"] == 0.02
    p = get_method("deacl").params
    assert (p.eps, p.attack_step, p.attack_steps) == (8 / 255, 2 / 255, 5)
    assert get_method("deacl-teacher").params.temperature == 0.2
    # ~ 0.2x ACL's pretraining cost in units (WAVE2.md 7): 17 forward-equivalents x 100 epochs vs 32 x 1000
    assert 17 * r.epochs / (32 * 1000) == pytest.approx(0.053, abs=1e-3)
    assert {"deacl", "deacl-teacher"} <= set(list_methods())


def test_teacher_method_step():
    cfg = pretrain_config("deacl-teacher")
    tr = build_training(cfg, random_data(16), CPU)
    assert [lin.out_features for lin in tr.model.head.linears] == [4 * 64, 256]
    v = tr.method.views
    assert (v.jitter, v.p_jitter, v.p_gray, v.interpolation, v.scale) == ((0.8, 0.8, 0.8, 0.2), 0.8, 0.2,
                                                                           "bicubic", (0.08, 1.0))
    log = EpochLog(1, CPU)
    tr.step(torch.arange(8), 1, 0, log)
    assert math.isfinite(log.losses[0].item()) and log.losses[0].item() > 0


def _pl_bolts_lrs(base, warmup_start, eta_min, warmup, epochs):
    """pl_bolts LinearWarmupCosineAnnealingLR.get_lr (the chained form Lightning steps once per
    epoch), re-derived: the lr of each epoch."""
    lrs = []
    for e in range(epochs):
        if e == 0:
            lr = warmup_start
        elif e < warmup:
            lr = lrs[-1] + (base - warmup_start) / (warmup - 1)
        elif e == warmup:
            lr = base
        else:
            m = epochs - warmup
            lr = (1 + math.cos(math.pi * (e - warmup) / m)) / (1 + math.cos(math.pi * (e - warmup - 1) / m)) \
                * (lrs[-1] - eta_min) + eta_min
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("name", ["deacl", "deacl-teacher"])
def test_the_released_schedule_steps_per_epoch(name):
    m = get_method(name)
    r = m.paper_recipe("cifar10")
    steps = 7
    factor = m.lr_lambda(r, steps, steps * r.epochs)
    ref = _pl_bolts_lrs(r.lr, 0.003, 0.0, 10, r.epochs)
    for e in range(r.epochs):
        for i in (0, steps - 1):  # constant within an epoch
            assert r.lr * factor(e * steps + i) == pytest.approx(ref[e], rel=1e-9, abs=1e-12), (e, i)
    assert ref[0] == 0.003 and ref[9] == pytest.approx(r.lr) and ref[10] == r.lr
    # the pretraining loop runs each update at lr x factor(step)
    tr, _ = _training() if name == "deacl" else (build_training(pretrain_config(name), random_data(16), CPU), None)
    assert tr.scheduler.lr_lambdas[0](0) == get_method(name).lr_lambda(
        pretrain_config(name).recipe, tr.steps_per_epoch, tr.total_steps)(0)
    it = get_method(name, lr_schedule="iteration").lr_lambda(r, steps, steps * r.epochs)
    assert it(3) != factor(3)  # acbench's per-iteration warm-up


@pytest.mark.parametrize("bad,message", [
    ({"random_start": "clip"}, "random_start"), ({"student_init": "random"}, "student_init"),
    ({"trades_k": -1.0}, "trades_k"), ({"lr_schedule": "epoch"}, "lr_schedule"), ({"teacher_file": ""}, "teacher_file"), ({"crop_padding": -1}, "crop_padding"),
    ({"stem_padding": -1}, "stem_padding"),
])
def test_bad_parameters(bad, message):
    with pytest.raises(AcbenchError, match=message):
        get_method("deacl", **bad)


# ---- the teacher stage ------------------------------------------------------------------------


def _encoder_file(path, backbone: str, method: str = "deacl-teacher", seed: int = 0):
    """An encoder.pt as the pretraining loop writes it, with random weights."""
    data = random_data(4)
    m = get_method(method)
    torch.manual_seed(seed)
    model = m.build_model(BackboneConfig(backbone, 3, data.mean, data.std))
    save_checkpoint(path, "encoder", {
        "method": method, "method_params": {}, "backbone": model.encoder.config.to_dict(),
        "branches": list(m.branches), "finetune_branch": m.finetune_branch, "config": {},
        "state_dict": model.state_dict()})
    return model


def _stage(tmp_path, **params):
    opts = RunOptions(results=tmp_path / "results", progress=False)
    return opts, PretrainStage(opts, "deacl", params, SMOKE, "digits", 0)


def test_a_teacher_of_the_wrong_shape_is_one_line_and_nothing_is_written(tmp_path):
    path = tmp_path / "wide.pt"
    _encoder_file(path, "resnet18-small")  # the smoke student is resnet10-tiny
    opts, stage = _stage(tmp_path, teacher_file=str(path))
    with pytest.raises(CheckpointMismatch) as e:
        run_once(stage, opts)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "shape mismatches" in msg and "conv1.weight" in msg
    assert isinstance(e.value, AcbenchError)
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").rglob("*.json"))
    # CLI: one line, exit status 1
    r = CliRunner().invoke(main, ["run", "--method", "deacl", "--preset", "smoke", "--quiet",
                                  "--results", str(tmp_path / "cli"), "--param", f"teacher_file={path}"])
    assert r.exit_code != 0 and str(path) in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not any((tmp_path / "cli").rglob("*.pt"))


def test_teacher_checks(tmp_path):
    backbone = BackboneConfig("resnet10-tiny", 3)
    acl = tmp_path / "acl.pt"
    model = _encoder_file(acl, "resnet10-tiny", method="acl")  # dual BN: its finetuned branch is used
    state, info = read_teacher(acl, backbone)
    assert info["branch"] == "pgd"
    want = branch_state_dict({k[8:]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}, "pgd")
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    with pytest.raises(CheckpointMismatch, match="teacher weights from mine.pt does not fit the model: .*shape"):
        build_teacher({"state_dict": state, "source": "mine.pt"}, BackboneConfig("resnet10-wide", 3), CPU)
    with pytest.raises(AcbenchError, match="does not exist"):
        read_teacher(tmp_path / "nowhere.pt", backbone)


def test_teacher_file_is_what_the_student_starts_from(tmp_path):
    path = tmp_path / "teacher.pt"
    model = _encoder_file(path, "resnet10-tiny", seed=4)
    opts, stage = _stage(tmp_path, teacher_file=str(path))
    run_once(stage, opts)
    (teacher_dir,) = (tmp_path / "results" / "runs" / "teacher").iterdir()
    saved = torch.load(teacher_dir / TEACHER, weights_only=True)["state_dict"]
    want = {k[8:]: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    assert all(torch.equal(saved[k], v) for k, v in branch_state_dict(want, "normal").items())
    (pretrain_dir,) = (tmp_path / "results" / "runs" / "pretrain").iterdir()  # no teacher pretraining
    assert json.loads((pretrain_dir / "config.json").read_text())["upstream"] == {"teacher": teacher_dir.name}
    assert json.loads((teacher_dir / "config.json").read_text())["teacher_file"] == str(path)
    assert TeacherStage(stage).upstream() == {}


@pytest.mark.slow
def test_cli_smoke_run_trains_the_teacher_then_deacl(tmp_path):
    results = tmp_path / "results"
    r = CliRunner().invoke(main, ["run", "--method", "deacl", "--preset", "smoke", "--quiet", "--results",
                                  str(results), "--schemes", "slf", "--attacks", "pgd20", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(r.output)
    assert rec["method"] == "deacl" and 0 <= rec["metrics"]["clean"] <= 100
    runs = results / "runs"
    pretrains = {json.loads((d / "config.json").read_text())["method"]: d for d in (runs / "pretrain").iterdir()}
    assert set(pretrains) == {"deacl-teacher", "deacl"}
    (teacher_dir,) = (runs / "teacher").iterdir()
    config = json.loads((teacher_dir / "config.json").read_text())
    assert config["upstream"] == {"pretrain": pretrains["deacl-teacher"].name}
    deacl_config = json.loads((pretrains["deacl"] / "config.json").read_text())
    assert deacl_config["upstream"] == {"teacher": teacher_dir.name}
    teacher_history = json.loads((pretrains["deacl-teacher"] / "history.json").read_text())
    assert len(teacher_history) == 1 and teacher_history[0]["loss"] > 0
    history = json.loads((pretrains["deacl"] / "history.json").read_text())
    assert len(history) == 1 and -3.0 <= history[0]["loss"] < 0 and "distill" in history[0]
    # the released padding-2 stem from pretraining to the evaluated classifier
    assert load_classifier(results / rec["checkpoint"]).encoder.conv1.padding == (2, 2)


def test_the_teacher_is_pretrained_with_the_students_stem_padding(tmp_path):
    opts = RunOptions(results=tmp_path, progress=False)
    preset = get_preset("smoke")
    for params, expected in (({}, 2), ({"stem_padding": 1}, 1)):
        student = PretrainStage(opts, "deacl", params, preset, "digits", 0)
        teacher = TeacherStage(student).pretrain()
        assert teacher.method == "deacl-teacher"
        assert teacher.pretrain_config().method_params["stem_padding"] == expected
