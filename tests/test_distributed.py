"""Multi-process pretraining (benchmark.distributed): 2 CPU processes (gloo) against one process.

One pretraining step on 2 processes (each half of the global batch, synchronised BN, gathered
embeddings, averaged gradients) must give the loss and gradients of one process on the global
batch. Views and attack random starts are made deterministic functions of each image, so both
settings see the same inputs.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import attacks.contrastive
import benchmark.ddp as distributed
from benchmark.data import load_dataset
from benchmark.models import BackboneConfig
from benchmark.pretrain import EpochLog, PretrainConfig, build_training
from methods import get_method
from methods.advcl import CLUSTERS
from methods.base import Recipe

pytestmark = pytest.mark.slow  # end-to-end: processes, whole stages

WORLD = 2
BATCH = 8  # global batch: 4 images per process
E2E_METHODS = ("acl", "rocl", "simclr", "advcl", "advcl-ip", "rocl-hn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- deterministic stand-ins for the random parts of a step ------------------------------------


class _Views(nn.Module):
    """Alternates two fixed per-image transforms (t1, t2, t1, ...), in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = x.double()
        return x.flip(-1) if self.calls % 2 else (0.8 * x + 0.1).roll(1, dims=-2)


def _weak(x: torch.Tensor) -> torch.Tensor:
    return x.double().roll(2, dims=-1)


def _fixed_start(x: torch.Tensor, eps: float, generator=None) -> torch.Tensor:
    return (x + eps * torch.sin(37.0 * x + 1.0)).clamp(0.0, 1.0)


# ---- the two settings -------------------------------------------------------------------------


def _acl_direct() -> dict:
    """ACL's loss after its attack, on fixed views (fp32): model and loss called directly."""
    torch.manual_seed(0)
    method = get_method("acl")
    model = method.build_model(BackboneConfig("resnet10-tiny", 3, (0.5,) * 3, (0.25,) * 3))
    model = distributed.convert_sync_batchnorm(model)
    distributed.broadcast_module(model)
    model.train()
    g = torch.Generator().manual_seed(1)
    t = torch.rand(2, BATCH, 3, 16, 16, generator=g)
    adv = (t + 0.03 * (2 * torch.rand(t.shape, generator=g) - 1)).clamp(0, 1)
    b, r = BATCH // distributed.world_size(), distributed.rank()
    t, adv = (v[:, r * b : (r + 1) * b].reshape(2 * b, 3, 16, 16) for v in (t, adv))
    clean_loss = method.contrast(model(t, "normal"), b)
    adv_loss = method.contrast(model(adv, "pgd"), b)
    loss = 0.5 * (clean_loss + adv_loss)
    loss.backward()
    distributed.average_gradients(model.parameters())
    return {
        "loss": loss.detach(),
        "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
        "buffers": {k: v.clone() for k, v in model.named_buffers()},
    }


def _e2e(name: str, per_half_attack: bool = False) -> dict:
    """One real ``Training.step`` of method ``name`` (float64, deterministic views and starts)."""
    data = load_dataset("synthetic", image_size=16)
    n = 16
    cfg = PretrainConfig(
        method=name, method_params={}, dataset="synthetic", image_size=16, backbone="resnet10-tiny",
        seed=0, recipe=Recipe(epochs=1, batch_size=BATCH, optimizer="sgd", lr=0.1, warmup_epochs=0),
        train_limit=n, precision="fp32",
    )
    g = torch.Generator().manual_seed(2)
    extras = {"pseudo_labels": {f"k{h}": torch.randint(0, h, (n,), generator=g) for h in CLUSTERS}}
    tr = build_training(cfg, data, torch.device("cpu"), extras if name.startswith("advcl") else None)
    tr.model.double()
    tr.method.views = _Views()
    tr.method.weak = _weak
    if per_half_attack:  # RoCL's reference: one attack per half batch (its per-GPU negatives)
        attack = tr.method.adversarial_view

        def halves(model, t1, t2):
            h = t1.shape[0] // 2
            return torch.cat([attack(model, t1[:h], t2[:h]), attack(model, t1[h:], t2[h:])])

        tr.method.adversarial_view = halves
        pair_loss = tr.method.pair_loss

        def reg_halves(z):  # the regulariser's negatives are per GPU too (its BN statistics: SyncBN)
            if z.shape[1] != BATCH:  # an attack on half a batch
                return pair_loss(z)
            h = BATCH // 2
            return 0.5 * (pair_loss(z[:, :h]) + pair_loss(z[:, h:]))

        tr.method.pair_loss = reg_halves
    log = EpochLog(1, torch.device("cpu"))
    idx = torch.tensor([3, 11, 0, 7, 14, 5, 9, 2])  # the global batch, the same on every rank
    tr.step(idx, 1, 0, log)
    return {
        "loss": log.losses[0].clone(),
        "logs": {k: torch.as_tensor(v).clone() for k, v in log.sums.items()},
        "grads": {k: p.grad.clone() for k, p in tr.model.named_parameters() if p.grad is not None},
        "buffers": {k: v.clone() for k, v in tr.model.named_buffers()},
    }


def _gather_check() -> dict:
    r = dist.get_rank()
    x = (torch.arange(6.0, dtype=torch.float64).view(3, 2) + 10 * r).requires_grad_()
    w = torch.randn(WORLD * 3, 2, generator=torch.Generator().manual_seed(r), dtype=torch.float64)
    y = distributed.all_gather_with_grad(x)
    (y * w).sum().backward()
    z = torch.arange(24.0).view(2, 3, 4) + 100 * r  # [V, B_local, D]
    return {"y": y.detach(), "x_grad": x.grad, "views": distributed.gather_views(z)}


def _run_all() -> dict:
    attacks.contrastive.random_start = _fixed_start
    out = {"acl_direct": _acl_direct(), "gather": _gather_check() if distributed.is_distributed() else None}
    for name in E2E_METHODS:
        out[name] = _e2e(name)
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    distributed.init_from_env("cpu")
    try:
        torch.save(_run_all(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def two_process(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process(monkeypatch_module) -> dict:
    ref = {"acl_direct": _acl_direct()}
    for name in E2E_METHODS:
        ref[name] = _e2e(name, per_half_attack=name.startswith("rocl"))
    return ref


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp_ = pytest.MonkeyPatch()
    mp_.setattr(attacks.contrastive, "random_start", _fixed_start)
    yield mp_
    mp_.undo()


def _close(a: dict, b: dict, what: str, rtol: float, atol: float, atol_scale: float = 0.0) -> None:
    """allclose per entry; ``atol_scale`` adds ``atol_scale * max|b|`` to atol (float32 noise is
    relative to a tensor's scale: a float32 ACL gradient of scale 2 is off by 3e-6 from float64)."""
    assert a.keys() == b.keys(), what
    for k in a:
        tol = max(atol, atol_scale * float(b[k].abs().max())) if b[k].numel() else atol
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=tol, msg=lambda m, k=k: f"{what} {k}: {m}")


# ---- tests ------------------------------------------------------------------------------------


def test_all_gather_with_grad(two_process):
    w = [torch.randn(WORLD * 3, 2, generator=torch.Generator().manual_seed(r), dtype=torch.float64)
         for r in range(WORLD)]
    xs = [torch.arange(6.0, dtype=torch.float64).view(3, 2) + 10 * r for r in range(WORLD)]
    for r, res in enumerate(two_process):
        g = res["gather"]
        torch.testing.assert_close(g["y"], torch.cat(xs))
        # d/dx_r of sum over ranks of (y * w_rank).sum(): the sum of the weights, rank r's rows
        torch.testing.assert_close(g["x_grad"], (w[0] + w[1])[3 * r : 3 * (r + 1)])
        zs = [torch.arange(24.0).view(2, 3, 4) + 100 * q for q in range(WORLD)]
        torch.testing.assert_close(g["views"], torch.cat(zs, dim=1))  # views kept, batch gathered


def test_acl_step_matches_one_process(two_process, one_process):
    ref = one_process["acl_direct"]
    for res in two_process:
        r = res["acl_direct"]
        torch.testing.assert_close(r["loss"], ref["loss"], rtol=0, atol=1e-5)
        _close(r["grads"], ref["grads"], "grad", rtol=1e-4, atol=1e-6, atol_scale=1e-5)
        _close(r["buffers"], ref["buffers"], "buffer", rtol=1e-4, atol=1e-6)
    bn = [k for k in ref["grads"] if ".bn.pgd." in k or ".bn.normal." in k]
    assert any(k.startswith("head.") for k in bn) and any(k.startswith("encoder.") for k in bn)
    assert all(ref["grads"][k].abs().sum() > 0 for k in bn)  # both branches, encoder and head


@pytest.mark.parametrize("name", E2E_METHODS)
def test_training_step_matches_one_process(two_process, one_process, name):
    """The real step (views, attack, loss, backward, all-reduce) on 2 processes vs one.

    ACL and AdvCL attack with global negatives (same adversarial examples as one process); RoCL
    attacks per process, so its reference attacks each half batch separately.
    """
    ref = one_process[name]
    # AdvCL's pseudo-label CE is a per-process mean: the loss of the global batch is the mean over ranks
    # RoCL's regulariser has per-process negatives, as released: its mean over ranks is the reference's
    local = {"loss", "ce"} if name.startswith("advcl") else {"loss", "reg"} if name.startswith("rocl") else set()
    for key in local:
        got = torch.stack([res[name]["logs"][key] for res in two_process]).mean()
        torch.testing.assert_close(got, ref["logs"][key], rtol=1e-7, atol=1e-9)
    for res in two_process:
        r = res[name]
        if not local:
            torch.testing.assert_close(r["loss"], ref["loss"], rtol=1e-7, atol=1e-9)
        shared = {k: v for k, v in r["logs"].items() if k not in local}
        _close(shared, {k: v for k, v in ref["logs"].items() if k not in local}, "log", rtol=1e-7, atol=1e-9)
        _close(r["grads"], ref["grads"], "grad", rtol=1e-6, atol=1e-9)
        _close(r["buffers"], ref["buffers"], "buffer", rtol=1e-6, atol=1e-9)
    # the replicas are identical after the step
    _close(two_process[0][name]["grads"], two_process[1][name]["grads"], "replica grad", rtol=0, atol=0)


def test_convert_sync_batchnorm_keeps_parameters_and_keys():
    torch.manual_seed(0)
    model = get_method("advcl").build_model(BackboneConfig("resnet10-tiny"))
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    plain = copy.deepcopy(model)
    converted = distributed.convert_sync_batchnorm(model)
    bns = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, distributed.CPUSyncBatchNorm) for m in bns)
    assert len(bns) == sum(1 for k in keys if k.endswith("running_mean"))
    assert list(converted.state_dict()) == keys
    assert all(p is params[k] for k, p in converted.named_parameters())
    x = torch.rand(4, 3, 16, 16)
    for train in (True, False):  # one process: a plain BatchNorm (batch statistics, then running)
        plain.train(train), converted.train(train)
        torch.testing.assert_close(converted(x, "pgd"), plain(x, "pgd"))
    _close(dict(converted.named_buffers()), dict(plain.named_buffers()), "buffer", rtol=0, atol=0)


def test_torchrun_cli_pretrain(tmp_path):
    """`torchrun -m benchmark.cli pretrain` on 2 CPU processes: one stage folder, written by rank 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "benchmark.cli", "pretrain", "--method", "simclr", "--preset", "smoke", "--device", "cpu",
           "--results", str(tmp_path), "--quiet", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "runs" / "pretrain").iterdir())
    assert len(runs) == 1
    files = sorted(p.name for p in runs[0].iterdir())
    assert files == sorted([".lock", "config.json", "done.json", "encoder.pt", "history.json", "last.pt"])
    done = json.loads((runs[0] / "done.json").read_text())
    assert done["world_size"] == 2 and done["batch_size"] == 32
    assert proc.stdout.count('"stage": "pretrain"') == 1  # only rank 0 reports
