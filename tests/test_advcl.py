"""AdvCL and its A-InfoNCE variants: views, adaptive weight, pseudo-label stage, training step."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark import pseudolabels
from benchmark.config import get_preset
from benchmark.models import BackboneConfig, PlainBatchNorm
from benchmark.pipeline import RunOptions, pretrain_stage
from methods import get_method
from methods.advcl import (
    CLUSTERS,
    AdaptiveIPWeight,
    adaptive_ip_weight,
    high_frequency,
)
from methods.base import Batch
from methods.losses import a_info_nce, info_nce

VARIANTS = ("advcl", "advcl-ip", "advcl-hn", "advcl-iphn")
BRANCHES = ("normal", "pgd", "pgd_ce")


# ---- HFC view ---------------------------------------------------------------------------------


def _hfc_reference(img: np.ndarray, radius: float) -> np.ndarray:
    """Direct numpy reference: per channel FFT, centre, zero dist < r, inverse, real part."""
    c, h, w = img.shape
    out = np.empty_like(img, dtype=np.float64)
    for ch in range(c):
        f = np.fft.fftshift(np.fft.fft2(img[ch]))
        for i in range(h):
            for j in range(w):
                if math.sqrt((i - h / 2) ** 2 + (j - w / 2) ** 2) < radius:
                    f[i, j] = 0
        out[ch] = np.real(np.fft.ifft2(np.fft.ifftshift(f)))
    return out


@pytest.mark.parametrize("size,radius", [(16, 4.0), (32, 8.0), (15, 3.5)])
def test_hfc_matches_numpy_reference(size, radius):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    got = high_frequency(x, radius)
    for b in range(2):
        ref = _hfc_reference(x[b].double().numpy(), radius)
        np.testing.assert_allclose(got[b].numpy(), ref, atol=1e-5)
    assert got.min() < 0  # not clamped: the low frequencies (the mean) are gone
    assert torch.allclose(high_frequency(x, 0.0), x, atol=1e-5)  # nothing removed


# ---- adaptive inferior-positive weight ------------------------------------------------------


def test_adaptive_ip_weight_rule():
    lam0, d_bar, d_min = 0.2, 1.0, 0.4
    assert adaptive_ip_weight(1.3, d_bar, d_min, lam0) == lam0  # above d_bar
    assert adaptive_ip_weight(0.3, d_bar, d_min, lam0) == 0.5  # below d_min
    assert adaptive_ip_weight(0.7, d_bar, d_min, lam0) == pytest.approx(0.2 + 0.5 * 0.3)  # half-way
    assert adaptive_ip_weight(1.0, d_bar, d_min, lam0) == pytest.approx(lam0)  # the d_bar end
    assert adaptive_ip_weight(0.4, d_bar, d_min, lam0) == pytest.approx(0.5)  # the d_min end
    assert adaptive_ip_weight(0.4, 0.4, 0.4, lam0) == lam0  # degenerate d_bar == d_min: no 0/0


def test_adaptive_ip_weight_warmup_then_adapts_and_resumes():
    w = AdaptiveIPWeight(lam0=0.3, warmup_epochs=2, d_min=0.5)
    # warm-up (epochs 1..K): lam0, d_bar = batch-size-weighted mean of d_t
    assert w(1.0, 10, epoch=1) == 0.3
    assert w(2.0, 30, epoch=2) == 0.3
    assert w.d_bar == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)  # 1.75
    # after K: d_bar is frozen and the rule applies
    assert w(2.0, 10, epoch=3) == 0.3
    assert w(0.1, 10, epoch=3) == 0.5
    assert w(1.125, 10, epoch=4) == pytest.approx(0.3 + 0.5 * 0.2)
    assert w.d_bar == pytest.approx(1.75)
    # the method's state survives a resume
    m = get_method("advcl-ip", adaptive_epochs=2, d_min=0.5, ip=0.3)
    m.adaptive.load_state_dict(w.state_dict())
    fresh = get_method("advcl-ip", adaptive_epochs=2, d_min=0.5, ip=0.3)
    fresh.load_state_dict(m.state_dict())
    assert fresh.adaptive.d_bar == pytest.approx(1.75)
    assert fresh.on_epoch_start(5, 10) == {"d_bar": 1.75}
    assert get_method("advcl-hn").state_dict() == {}  # no adaptive weight, no state


# ---- parameters, recipes, model ---------------------------------------------------------------


def test_released_settings_per_dataset():
    ip = get_method("advcl-ip", dataset="cifar100").params
    assert (ip.ip, ip.adv_weight, ip.adaptive_epochs, ip.d_min, ip.lr) == (0.3, 1.5, 20, 0.5, 2.0)
    iphn = get_method("advcl-iphn").params
    assert (iphn.ip, iphn.adv_weight, iphn.adaptive_epochs, iphn.hn_beta, iphn.hn_tau_plus) == (
        0.2, 0.7, 30, 1.0, 0.1,
    )
    assert get_method("advcl-hn", dataset="cifar100").params.hn_tau_plus == 0.01
    lrs = {m: get_method(m).paper_recipe("cifar10").lr for m in VARIANTS}
    assert lrs == {"advcl": 0.5, "advcl-ip": 1.0, "advcl-hn": 1.2, "advcl-iphn": 2.0}
    r = get_method("advcl").paper_recipe("cifar10")
    assert (r.epochs, r.batch_size, r.optimizer, r.momentum, r.weight_decay) == (1000, 512, "sgd", 0.9, 1e-4)
    assert (r.warmup_epochs, r.min_lr_ratio) == (10, 1e-3) and "AdvCL" in r.source
    assert {get_method(m).paper_recipe().epochs for m in VARIANTS} == {1000}
    with pytest.raises(ValueError, match="attack_bn_mode"):
        get_method("advcl", attack_bn_mode="frozen")


def test_model_has_triple_bn_shared_head_bn_and_pseudo_label_heads():
    model = get_method("advcl").build_model(BackboneConfig("resnet10-tiny"))
    assert set(model.encoder.bn1.bn) == set(BRANCHES)
    norms = [m for m in model.head.norms if not isinstance(m, torch.nn.Identity)]
    assert len(norms) == 1 and isinstance(norms[0], PlainBatchNorm)  # one BN, every branch
    assert {k: v.out_features for k, v in model.extra_heads.items()} == {f"fc{h}": h for h in CLUSTERS}
    model.eval()
    h = torch.randn(4, 64)
    assert torch.equal(model.head(h, "normal"), model.head(h, "pgd"))


# ---- losses -----------------------------------------------------------------------------------


def test_contrastive_terms_equal_the_spec():
    z = F.normalize(torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    scale = 0.5 / 0.07
    base = scale * info_nce(z, 0.5)
    assert torch.allclose(get_method("advcl").contrast(z), base)
    plain = get_method("advcl-iphn", ip=None, adv_weight=1.0, hn_beta=None, adaptive_epochs=None)
    assert torch.allclose(plain.contrast(z), base, atol=1e-6)  # a_info_nce reduces to info_nce
    iphn = get_method("advcl-iphn").contrast(z, lam=0.35)
    ref = scale * a_info_nce(z, adv=(0,), temperature=0.5, ip=0.35, adv_weight=0.7, hn=(1.0, 0.1))
    assert torch.allclose(iphn, ref)
    ip = get_method("advcl-ip").contrast(z, lam=None)  # lam0 when no adaptive value is given
    assert torch.allclose(ip, scale * a_info_nce(z, adv=(0,), ip=0.2, adv_weight=1.2))
    hn = get_method("advcl-hn").contrast(z)
    assert torch.allclose(hn, scale * a_info_nce(z, adv=(0,), hn=(1.0, 0.12)))


# ---- one training step ------------------------------------------------------------------------


def _labels(n: int, seed: int = 0) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {h: torch.randint(0, min(h, 4), (n,), generator=g) for h in CLUSTERS}


def _step(name: str, **params):
    torch.manual_seed(0)
    m = get_method(name, **params)
    model = m.build_model(BackboneConfig("resnet10-tiny")).train()
    m.setup(16, torch.device("cpu"), {"pseudo_labels": _labels(20), "n_images": 20})
    batch = Batch(images=torch.rand(8, 3, 16, 16), indices=torch.arange(3, 11), epoch=1, epochs=1, step=0)
    before = {b: model.encoder.bn1.bn[b].num_batches_tracked.item() for b in BRANCHES}
    loss, logs = m.training_step(model, batch)
    tracked = {b: model.encoder.bn1.bn[b].num_batches_tracked.item() - before[b] for b in BRANCHES}
    return m, model, loss, logs, tracked


@pytest.mark.parametrize("name", VARIANTS)
def test_one_training_step(name):
    m, model, loss, logs, tracked = _step(name)
    assert torch.isfinite(loss)
    assert torch.allclose(loss.detach(), logs["contrast"] + 0.2 * logs["ce"])
    loss.backward()
    assert model.encoder.conv1.weight.grad.abs().sum() > 0
    assert model.head.linears[0].weight.grad.abs().sum() > 0
    for h in CLUSTERS:
        assert model.extra_heads[f"fc{h}"].weight.grad.abs().sum() > 0, h
    for b in BRANCHES:  # every branch's running statistics moved
        assert tracked[b] > 0, b
        assert not torch.allclose(model.encoder.bn1.bn[b].running_mean, torch.zeros(8))
    if name.startswith("advcl-ip"):
        assert logs["lam"] == 0.2 and logs["d_t"] > 0


def test_attack_bn_mode():
    # as released: the attack runs in train mode (5 attack forwards + 1 loss forward per
    # adversarial branch; the 3 clean views once in the attack, once in the loss)
    assert _step("advcl")[4] == {"normal": 6, "pgd": 6, "pgd_ce": 6}
    assert _step("advcl", attack_bn_mode="eval")[4] == {"normal": 3, "pgd": 1, "pgd_ce": 1}


# ---- pseudo-labels ----------------------------------------------------------------------------


def test_pseudo_labels_stage_reused_by_the_advcl_family(tmp_path, monkeypatch):
    calls = []
    kmeans = pseudolabels.run_kmeans
    monkeypatch.setattr(pseudolabels, "run_kmeans", lambda f, k, s: calls.append(k) or kmeans(f, k, s))
    opts = RunOptions(results=tmp_path, progress=False)
    preset = get_preset("smoke")
    pretrain_stage(opts, "advcl", {}, preset, "digits", 0)
    assert calls == [2, 10, 12]  # 128 smoke images: k capped at 128 // 10, each count once
    (stage_dir,) = (tmp_path / "runs" / "pseudo_labels").iterdir()
    done = stage_dir / "done.json"
    mtime = done.stat().st_mtime_ns
    info = json.loads(done.read_text())
    assert info["clusters"] == {"k2": 2, "k10": 10, "k50": 12, "k100": 12, "k500": 12}
    with np.load(stage_dir / "labels.npz") as f:
        assert sorted(f.files) == sorted(f"k{h}" for h in CLUSTERS)
        assert f["k500"].dtype == np.int64 and f["k500"].shape == (128,) and f["k500"].max() < 12
    pretrain_stage(opts, "advcl-ip", {}, preset, "digits", 0)
    assert calls == [2, 10, 12] and done.stat().st_mtime_ns == mtime  # reused, not recomputed
    pretrains = [json.loads((d / "config.json").read_text()) for d in (tmp_path / "runs" / "pretrain").iterdir()]
    upstream = {c["config"]["method"]: c["upstream"] for c in pretrains}
    assert upstream["advcl"] == upstream["advcl-ip"] == {"pseudo_labels": stage_dir.name}
    assert len(upstream) == 3  # simclr (the shared encoder), advcl, advcl-ip


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_user_pseudo_label_file(tmp_path):
    good = {f"k{h}": np.arange(20) % min(h, 3) for h in CLUSTERS}
    path = _write(tmp_path / "good.npz", **good)
    m = get_method("advcl", pseudo_labels_file=path)
    assert m.requires == () and get_method("advcl").requires == ("pseudo_labels",)
    m.setup(16, torch.device("cpu"), {"n_images": 20})
    assert m.labels.shape == (len(CLUSTERS), 20) and m.labels.dtype == torch.int64

    with pytest.raises(ValueError, match=r"short.npz: k2 has 20 labels but there are 30 pretraining images"):
        get_method("advcl", pseudo_labels_file=_write(tmp_path / "short.npz", **good)).setup(
            16, torch.device("cpu"), {"n_images": 30}
        )
    bad_range = dict(good, k10=np.full(20, 10))
    with pytest.raises(ValueError, match=r"range.npz: k10 labels must be in \[0, 10\), got values in \[10, 10\]"):
        get_method("advcl", pseudo_labels_file=_write(tmp_path / "range.npz", **bad_range))
    with pytest.raises(ValueError, match=r"neg.npz: k2 labels must be in \[0, 2\)"):
        get_method("advcl", pseudo_labels_file=_write(tmp_path / "neg.npz", **dict(good, k2=-np.ones(20, int))))
    with pytest.raises(ValueError, match=r"float.npz: k50 must hold integers"):
        get_method("advcl", pseudo_labels_file=_write(tmp_path / "float.npz", **dict(good, k50=np.zeros(20))))
    missing = {k: v for k, v in good.items() if k != "k500"}
    with pytest.raises(ValueError, match=r"missing.npz: missing pseudo-label arrays k500"):
        get_method("advcl", pseudo_labels_file=_write(tmp_path / "missing.npz", **missing))
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text.npz cannot be read"):
        get_method("advcl", pseudo_labels_file=str(tmp_path / "text.npz"))
    with pytest.raises(ValueError, match=r"nowhere.npz does not exist"):
        get_method("advcl", pseudo_labels_file=str(tmp_path / "nowhere.npz"))
    with pytest.raises(ValueError, match="needs pseudo-labels"):
        get_method("advcl").setup(16, torch.device("cpu"), {"n_images": 20})
