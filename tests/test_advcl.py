"""AdvCL and its A-InfoNCE variants: views, adaptive weight, pseudo-label files and stage,
training step."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import adaptive_lam_reference, one_step

from benchmark import pseudolabels
from benchmark.errors import ConfigError
from benchmark.labels import check_pseudo_labels, load_pseudo_labels, save_pseudo_labels
from benchmark.models import BackboneConfig, PlainBatchNorm
from benchmark.pipeline import Target, run_pretrain_stage
from benchmark.stage import RunOptions
from methods import get_method
from methods.advcl import CLUSTERS, AdaptiveIPWeight, high_frequency
from methods.losses import a_info_nce, a_info_nce_advcl, info_nce

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


def _lam(d_t: float, d_bar: float, d_min: float, lam0: float) -> float:
    """lam of :class:`AdaptiveIPWeight` (the tensor rule) for ``d_t`` after a warm-up giving ``d_bar``."""
    w = AdaptiveIPWeight(lam0, warmup_epochs=1, d_min=d_min)
    assert w(torch.tensor(d_bar, dtype=torch.float64), 8, epoch=1) == lam0
    lam = w(torch.tensor(d_t, dtype=torch.float64), 8, epoch=2)
    assert isinstance(lam, torch.Tensor) and lam.dtype == torch.float64
    return float(lam)


@pytest.mark.parametrize(
    "d_t,d_bar,d_min,lam0,expected",
    [
        (1.3, 1.0, 0.4, 0.2, 0.2),  # above d_bar: lam0
        (0.3, 1.0, 0.4, 0.2, 0.5),  # below d_min: 0.5
        (0.7, 1.0, 0.4, 0.2, 0.2 + 0.5 * 0.3),  # half-way
        (1.0, 1.0, 0.4, 0.2, 0.2),  # the d_bar end
        (0.4, 1.0, 0.4, 0.2, 0.5),  # the d_min end
        (0.4, 0.4, 0.4, 0.2, 0.2),  # degenerate d_bar == d_min: no 0/0
        (0.55, 0.6, 0.5, 0.3, 0.3 + 0.05 / 0.1 * 0.2),
    ],
)
def test_adaptive_ip_weight_rule(d_t, d_bar, d_min, lam0, expected):
    assert adaptive_lam_reference(d_t, d_bar, d_min, lam0) == pytest.approx(expected, abs=1e-12)
    assert _lam(d_t, d_bar, d_min, lam0) == pytest.approx(expected, abs=1e-12)


def test_adaptive_ip_weight_warmup_then_adapts_and_resumes():
    def t(x: float) -> torch.Tensor:
        return torch.tensor(x)

    w = AdaptiveIPWeight(lam0=0.3, warmup_epochs=2, d_min=0.5)
    # warm-up (epochs 1..K): lam0, d_bar = batch-size-weighted mean of d_t
    assert w(t(1.0), 10, epoch=1) == 0.3
    assert w(t(2.0), 30, epoch=2) == 0.3
    assert w.d_bar == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)  # 1.75
    # after K: d_bar is frozen and the rule applies
    assert float(w(t(2.0), 10, epoch=3)) == 0.3
    assert float(w(t(0.1), 10, epoch=3)) == 0.5
    assert float(w(t(1.125), 10, epoch=4)) == pytest.approx(0.3 + 0.5 * 0.2)
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
    with pytest.raises(ConfigError, match="attack_bn_mode"):
        get_method("advcl", attack_bn_mode="frozen")
    with pytest.raises(ConfigError, match="adaptive_epochs must be >= 0"):
        get_method("advcl-ip", adaptive_epochs=-1)


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
    """Defaults: the released forms (a_info_nce_advcl); loss_form="clean": a_info_nce (HCL)."""
    z = F.normalize(torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    scale = 0.5 / 0.07
    base = scale * info_nce(z, 0.5)
    assert torch.allclose(get_method("advcl").contrast(z), base)
    plain = get_method("advcl-iphn", ip=None, adv_weight=1.0, hn_beta=None, adaptive_epochs=None, loss_form="clean")
    assert torch.allclose(plain.contrast(z), base, atol=1e-6)  # a_info_nce reduces to info_nce
    released_plain = get_method("advcl-iphn", ip=None, adv_weight=1.0, hn_beta=None, adaptive_epochs=None)
    assert not torch.allclose(released_plain.contrast(z), base, atol=1e-3)  # ori_SupConLoss's aliasing
    iphn = get_method("advcl-iphn").contrast(z, lam=0.35)
    ref = scale * a_info_nce_advcl(z, adv=0, temperature=0.5, ip=0.35, adv_weight=0.7, hn=(1.0, 0.1))
    assert torch.allclose(iphn, ref)
    clean = get_method("advcl-iphn", loss_form="clean").contrast(z, lam=0.35)
    ref = scale * a_info_nce(z, adv=(0,), temperature=0.5, ip=0.35, adv_weight=0.7, hn=(1.0, 0.1))
    assert torch.allclose(clean, ref) and not torch.allclose(clean, iphn, atol=1e-3)
    ip = get_method("advcl-ip").contrast(z, lam=None)  # lam0 when no adaptive value is given
    assert torch.allclose(ip, scale * a_info_nce(z, adv=(0,), ip=0.2, adv_weight=1.2))  # no hn: the same
    hn = get_method("advcl-hn").contrast(z)
    assert torch.allclose(hn, scale * a_info_nce_advcl(z, adv=0, hn=(1.0, 0.12)))
    clean_hn = get_method("advcl-hn", loss_form="clean").contrast(z)
    assert torch.allclose(clean_hn, scale * a_info_nce(z, adv=(0,), hn=(1.0, 0.12)))


def test_attack_contrasts():
    """advcl attacks with info_nce; the variants with the release's ori_SupConLoss(stop_grad=False)
    and their adv_weight (attack_form="clean": info_nce)."""
    z = F.normalize(torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert torch.equal(get_method("advcl").attack_contrast(z), info_nce(z, 0.5))
    for name, w in (("advcl-ip", 1.2), ("advcl-hn", 1.0), ("advcl-iphn", 0.7)):
        assert torch.allclose(get_method(name).attack_contrast(z), a_info_nce_advcl(z, adv_weight=w))
        assert torch.equal(get_method(name, attack_form="clean").attack_contrast(z), info_nce(z, 0.5))
    w100 = get_method("advcl-iphn", dataset="cifar100").attack_contrast(z)
    assert torch.allclose(w100, a_info_nce_advcl(z, adv_weight=1.5))


# ---- one training step ------------------------------------------------------------------------


def _step(name: str, **params):
    s = one_step(name, **params)
    key = "encoder.bn1.bn.{}.num_batches_tracked"
    state = s.model.state_dict()
    tracked = {b: int(state[key.format(b)] - s.before[key.format(b)]) for b in BRANCHES}
    return s.method, s.model, s.loss, s.logs, tracked


@pytest.mark.parametrize("name", VARIANTS)
def test_one_training_step(name):
    m, model, loss, logs, tracked = _step(name)
    assert torch.isfinite(loss)
    assert torch.allclose(loss.detach(), logs["contrast"] + 0.2 * logs["ce"])
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


@pytest.mark.slow
def test_pseudo_labels_stage_reused_by_the_advcl_family(tmp_path, monkeypatch):
    calls = []
    kmeans = pseudolabels.run_kmeans
    monkeypatch.setattr(pseudolabels, "run_kmeans", lambda f, k, s: calls.append(k) or kmeans(f, k, s))
    opts = RunOptions(results=tmp_path, progress=False)
    run_pretrain_stage(opts, Target("advcl", preset="smoke", dataset="digits"))
    assert calls == [2, 10, 12]  # 128 smoke images: k capped at 128 // 10, each count once
    (stage_dir,) = (tmp_path / "runs" / "pseudo_labels").iterdir()
    done = stage_dir / "done.json"
    mtime = done.stat().st_mtime_ns
    info = json.loads(done.read_text())
    assert info["clusters"] == {"k2": 2, "k10": 10, "k50": 12, "k100": 12, "k500": 12}
    with np.load(stage_dir / "labels.npz") as f:
        assert sorted(f.files) == sorted(f"k{h}" for h in CLUSTERS)
        assert f["k500"].dtype == np.int64 and f["k500"].shape == (128,) and f["k500"].max() < 12
    run_pretrain_stage(opts, Target("advcl-ip", preset="smoke", dataset="digits"))
    assert calls == [2, 10, 12] and done.stat().st_mtime_ns == mtime  # reused, not recomputed
    pretrains = [json.loads((d / "config.json").read_text()) for d in (tmp_path / "runs" / "pretrain").iterdir()]
    upstream = {c["method"]: c["upstream"] for c in pretrains}
    assert upstream["advcl"] == upstream["advcl-ip"] == {"pseudo_labels": stage_dir.name}
    assert len(upstream) == 3  # simclr (the shared encoder), advcl, advcl-ip


@pytest.mark.slow
def test_pseudo_labels_stage_loads_the_users_file(tmp_path, monkeypatch):
    """With pseudo_labels_file, AdvCL still requires the stage; the stage reads the file instead
    of pretraining SimCLR and running k-means, and the method trains on exactly those labels."""
    monkeypatch.setattr(pseudolabels, "run_kmeans", lambda *a: pytest.fail("k-means ran"))
    mine = {f"k{h}": (np.arange(128) * 7) % min(h, 5) for h in CLUSTERS}
    path = _write(tmp_path / "mine.npz", **mine)
    opts = RunOptions(results=tmp_path / "results", progress=False)
    run_pretrain_stage(opts, Target("advcl", {"pseudo_labels_file": path}, preset="smoke", dataset="digits"))
    (stage_dir,) = (tmp_path / "results" / "runs" / "pseudo_labels").iterdir()
    saved = load_pseudo_labels(stage_dir / "labels.npz", 128, CLUSTERS)
    assert all(torch.equal(saved[h], torch.from_numpy(mine[f"k{h}"])) for h in CLUSTERS)
    assert len(list((tmp_path / "results" / "runs" / "pretrain").iterdir())) == 1  # no SimCLR encoder
    _write(tmp_path / "short.npz", **{k: v[:100] for k, v in mine.items()})
    with pytest.raises(ConfigError, match="short.npz: k2 has 100 labels but there are 128 pretraining images"):
        run_pretrain_stage(opts, Target("advcl", {"pseudo_labels_file": str(tmp_path / "short.npz")},
                                        preset="smoke", dataset="digits"))


def _write(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _good(n: int = 20) -> dict[str, np.ndarray]:
    return {f"k{h}": np.arange(n) % min(h, 3) for h in CLUSTERS}


def test_pseudo_label_file_round_trip(tmp_path):
    labels = load_pseudo_labels(_write(tmp_path / "good.npz", **_good()), 20, CLUSTERS)
    assert sorted(labels) == sorted(CLUSTERS)
    assert all(v.dtype == torch.int64 and v.shape == (20,) for v in labels.values())
    assert torch.equal(labels[10], torch.arange(20) % 3)
    assert load_pseudo_labels(tmp_path / "good.npz", None, CLUSTERS).keys() == labels.keys()  # n unchecked
    save_pseudo_labels(tmp_path / "out" / "saved.npz", labels)  # int keys are written as k<h>
    with np.load(tmp_path / "out" / "saved.npz") as f:
        assert sorted(f.files) == sorted(f"k{h}" for h in CLUSTERS)
    again = load_pseudo_labels(tmp_path / "out" / "saved.npz", 20, CLUSTERS)
    assert all(torch.equal(again[h], labels[h]) for h in CLUSTERS)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["saved.npz"]  # no temporary left


def test_bad_pseudo_label_files_are_refused_in_one_line(tmp_path):
    good = _good()
    cases = [
        ("short.npz", good, 30, r"short.npz: k2 has 20 labels but there are 30 pretraining images"),
        ("range.npz", dict(good, k10=np.full(20, 10)), 20,
         r"range.npz: k10 labels must be in \[0, 10\), got values in \[10, 10\]"),
        ("neg.npz", dict(good, k2=-np.ones(20, int)), 20, r"neg.npz: k2 labels must be in \[0, 2\)"),
        ("float.npz", dict(good, k50=np.zeros(20)), 20, r"float.npz: k50 must hold integers"),
        ("bool.npz", dict(good, k2=np.zeros(20, bool)), 20, r"bool.npz: k2 must hold integers"),
        ("2d.npz", dict(good, k2=np.zeros((4, 5), int)), None, r"2d.npz: k2 must be 1-D"),
        ("ragged.npz", dict(good, k500=np.zeros(19, int)), None, r"ragged.npz: the arrays have different lengths \[19, 20\]"),
        ("missing.npz", {k: v for k, v in good.items() if k != "k500"}, 20,
         r"missing.npz: missing pseudo-label arrays k500"),
        ("object.npz", dict(good, k2=np.array([None] * 20, dtype=object)), 20, r"object.npz cannot be read as .npz"),
    ]
    for name, arrays, n, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            load_pseudo_labels(_write(tmp_path / name, **arrays), n, CLUSTERS)
        assert "\n" not in str(e.value) and str(tmp_path / name) in str(e.value), name
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ConfigError, match=r"text.npz cannot be read"):
        load_pseudo_labels(tmp_path / "text.npz", 20, CLUSTERS)
    np.save(tmp_path / "single.npy", np.zeros(20, int))
    with pytest.raises(ConfigError, match=r"single.npy is not an .npz archive"):
        load_pseudo_labels(tmp_path / "single.npy", 20, CLUSTERS)
    with pytest.raises(ConfigError, match=r"nowhere.npz does not exist"):
        load_pseudo_labels(tmp_path / "nowhere.npz", 20, CLUSTERS)
    with pytest.raises(ValueError, match=r"the stage: k2 must hold integers"):  # ConfigError is a ValueError
        check_pseudo_labels({f"k{h}": torch.zeros(3) for h in CLUSTERS}, 3, "the stage", CLUSTERS)


def test_advcl_takes_its_labels_from_the_stage(tmp_path):
    labels = {h: torch.from_numpy(v) for h, v in zip(CLUSTERS, _good().values())}
    m = get_method("advcl", pseudo_labels_file=str(tmp_path / "mine.npz"))  # the stage reads the file
    assert m.requires == ("pseudo_labels",)
    m.setup(16, torch.device("cpu"), {"pseudo_labels": labels, "n_images": 20})
    assert m.labels.shape == (len(CLUSTERS), 20) and m.labels.dtype == torch.int64
    assert torch.equal(m.labels[1], labels[10])
    with pytest.raises(ConfigError, match="the pseudo_labels stage: k2 has 20 labels but there are 30"):
        get_method("advcl").setup(16, torch.device("cpu"), {"pseudo_labels": labels, "n_images": 30})
    with pytest.raises(ConfigError, match="needs pseudo-labels"):
        get_method("advcl").setup(16, torch.device("cpu"), {"n_images": 20})
