"""Fidelity to the released code: for each method, its contrastive term and its attack objective,
computed with the calls that make acbench's defaults equal the release and through the method's
own functions with its default parameters, against re-derivations of the released formulas
written here (loops over anchors), in value and gradient (fp64).

Releases: SimCLR and ACL (VITA-Group/Adversarial-Contrastive-Learning, ``utils.py`` ``nt_xent``,
``train_simCLR.py``), RoCL (Kim-Minseon/RoCL, ``src/loss.py``, ``src/attack_lib.py``), AdvCL
(LijieFan/AdvCL, ``losses.py`` ``SupConLoss``), A-InfoNCE (yqy2001/A-InfoNCE, ``Asym-RoCL/loss.py``
and ``Asym-AdvCL/losses.py``). Settings are the released scripts' (CIFAR-10 and CIFAR-100).
The releases' numerical guards (+1e-8, +1e-9) are left out of the re-derivations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from benchmark.errors import UnknownName
from methods import get_method, list_methods, method_class
from methods.losses import a_info_nce, a_info_nce_advcl, info_nce

T = 0.5
ADVCL_FACTOR = T / 0.07  # AdvCL's SupConLoss scale (base_temperature 0.07)
BATCHES = (2, 5, 16)


def unit(v: int, b: int, seed: int, d: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(v, b, d, generator=g, dtype=torch.float64), dim=-1)


# --------------------------------------------------------------------------------------------
# Re-derivations. Rows are flattened as r = view * B + instance; row r's similarities are
# s_r = z_r . K^T / T with K the (possibly detached) matrix of all embeddings.
# --------------------------------------------------------------------------------------------


class Rows:
    def __init__(self, z: torch.Tensor, detach: bool):
        self.V, self.B, _ = z.shape
        self.n = self.V * self.B
        self.zf = z.reshape(self.n, -1)
        self.keys = self.zf.detach() if detach else self.zf

    def s(self, r: int) -> torch.Tensor:
        return self.keys @ self.zf[r] / T

    def inst(self, r: int) -> int:
        return r % self.B

    def positives(self, r: int) -> list[int]:
        return [c for c in range(self.n) if c != r and self.inst(c) == self.inst(r)]

    def negatives(self, r: int) -> list[int]:
        return [c for c in range(self.n) if self.inst(c) != self.inst(r)]

    def row(self, view: int, i: int) -> int:
        return view * self.B + i


def plain_terms(rows: Rows) -> dict[tuple[int, int], torch.Tensor]:
    """l[a, b] = -log(exp(s_ab) / sum_{c != a} exp(s_ac)) for every positive pair (a, b)."""
    out = {}
    for a in range(rows.n):
        s = rows.s(a)
        others = [c for c in range(rows.n) if c != a]
        log_den = torch.logsumexp(s[others], 0)
        for b in rows.positives(a):
            out[a, b] = log_den - s[b]
    return out


def ainfonce_hn_denominators(
    rows: Rows, beta: float, tau: float, shift: bool
) -> list[torch.Tensor]:
    """D_a = pos_a + Ng_a of A-InfoNCE's released HN code, per row a.

    The weight of negative k is normalised by the mean of exp(beta s_kk') over all VB entries of
    row k (the negatives' values, zero elsewhere). ``shift``: AdvCL's SupConLoss subtracts each
    row's detached maximum first; the clamp floor N exp(-1/T) then applies in shifted units.
    """
    n_neg = rows.V * (rows.B - 1)
    logits = []
    for a in range(rows.n):
        s = rows.s(a)
        logits.append(s - s.max().detach() if shift else s)
    mbar = []
    for k in range(rows.n):
        e = torch.exp(logits[k][rows.negatives(k)])
        mbar.append((e**beta).sum() / rows.n)
    dens = []
    for a in range(rows.n):
        e = torch.exp(logits[a])
        pos = torch.stack([e[p] for p in rows.positives(a)]).mean()
        rew = sum(e[k] ** beta * e[k] / mbar[k] for k in rows.negatives(a))
        ng = (-tau * n_neg * pos + rew) / (1 - tau)
        ng = torch.clamp(ng, min=n_neg * math.exp(-1 / T))
        dens.append(pos + ng)
    return dens


def rocl_hn_terms(rows: Rows, beta: float, tau: float) -> dict[tuple[int, int], torch.Tensor]:
    """Asym-RoCL NT_xent_HN: l_ab = -log(exp(s_ab) / D_a), the anchor's own denominator."""
    dens = ainfonce_hn_denominators(rows, beta, tau, shift=False)
    out = {}
    for a in range(rows.n):
        s = rows.s(a)
        for b in rows.positives(a):
            out[a, b] = torch.log(dens[a]) - s[b]
    return out


def advcl_hn_terms(rows: Rows, beta: float, tau: float) -> dict[tuple[int, int], torch.Tensor]:
    """Asym-AdvCL SupConLoss: E_ab = -log(exp(s_ab - max_a) / D_b), the column's denominator."""
    dens = ainfonce_hn_denominators(rows, beta, tau, shift=True)
    out = {}
    for a in range(rows.n):
        s = rows.s(a)
        t = s - s.max().detach()
        for b in rows.positives(a):
            out[a, b] = torch.log(dens[b]) - t[b]
    return out


def rocl_released(z: torch.Tensor, lam: float | None, adv_weight: float, hn) -> torch.Tensor:
    """RoCL's NT_xent('Rep') / A-InfoNCE's NT_xent(_HN) on [t1, t2, adv], detached similarity:
    (1/3B) sum_i [l(1,2) + l(2,1) + (l(1,a) + l(a,1) + l(2,a) + l(a,2))] without stop_grad;
    with it the last bracket is adv_weight * (lam (l(1,a) + l(2,a)) + (1 - lam)(l(a,1) + l(a,2)))."""
    rows = Rows(z, detach=True)
    terms = plain_terms(rows) if hn is None else rocl_hn_terms(rows, *hn)
    total = 0.0
    for i in range(rows.B):
        r1, r2, ra = (rows.row(u, i) for u in range(3))
        total = total + terms[r1, r2] + terms[r2, r1]
        if lam is None:
            total = total + terms[r1, ra] + terms[ra, r1] + terms[r2, ra] + terms[ra, r2]
        else:
            clean_anchor = terms[r1, ra] + terms[r2, ra]
            adv_anchor = terms[ra, r1] + terms[ra, r2]
            total = total + adv_weight * (lam * clean_anchor + (1 - lam) * adv_anchor)
    return total / (3 * rows.B)


def rocl_pair_released(z: torch.Tensor) -> torch.Tensor:
    """RoCL's attack objective and regulariser: NT_xent('None') on [x, t2], detached similarity."""
    rows = Rows(z, detach=True)
    terms = plain_terms(rows)
    return sum(terms.values()) / rows.n


def nt_xent_acl(z: torch.Tensor) -> torch.Tensor:
    """ACL's nt_xent on a pair of views, on cosine similarities (it normalises inside):
    -mean_j log(exp(s_j,pair(j)) / (sum_i exp(s_ij) - e^{1/T}))."""
    _, b, _ = z.shape
    zf = z.reshape(2 * b, -1)
    norms = zf.norm(dim=1, keepdim=True)
    e = torch.exp(zf @ zf.T / (norms * norms.T) / T)
    losses = []
    for j in range(2 * b):
        pair = (j + b) % (2 * b)
        losses.append(-torch.log(e[pair, j] / (e[:, j].sum() - math.exp(1 / T))))
    return torch.stack(losses).mean()


def supcon_advcl(z: torch.Tensor) -> torch.Tensor:
    """AdvCL's SupConLoss(temperature=T), unsupervised: (T/0.07) mean_a mean_{b in P(a)} l_ab."""
    rows = Rows(z, detach=False)
    terms = plain_terms(rows)
    per_row = [sum(terms[a, b] for b in rows.positives(a)) / (rows.V - 1) for a in range(rows.n)]
    return ADVCL_FACTOR * torch.stack(per_row).mean()


def advcl_ainfonce_released(z: torch.Tensor, lam: float | None, w: float, hn) -> torch.Tensor:
    """A-InfoNCE's SupConLoss (hn) / ori_SupConLoss (no hn) on [x_cl, t1, t2, HFC], x T/0.07.

    Clean-clean positive pairs keep their term E. For instance i and clean view c:
    stop_grad=False: position (adv, c) holds w E_(adv,c), position (c, adv) holds w^2 E_(adv,c);
    stop_grad=True:  both hold w (lam E^sg_(c,adv) + (1 - lam) E^sg_(adv,c)).
    """

    def terms_of(detach: bool):
        rows = Rows(z, detach)
        return rows, plain_terms(rows) if hn is None else advcl_hn_terms(rows, *hn)

    rows, e = terms_of(False)
    total = 0.0
    for a in range(rows.n):
        for b in rows.positives(a):
            if a >= rows.B and b >= rows.B:  # clean-clean
                total = total + e[a, b]
    if lam is None:
        for i in range(rows.B):
            for c in range(1, rows.V):
                total = total + (w + w * w) * e[rows.row(0, i), rows.row(c, i)]
    else:
        _, e_sg = terms_of(True)
        for i in range(rows.B):
            for c in range(1, rows.V):
                ra, rc = rows.row(0, i), rows.row(c, i)
                total = total + 2 * w * (lam * e_sg[rc, ra] + (1 - lam) * e_sg[ra, rc])
    return ADVCL_FACTOR * total / (rows.n * (rows.V - 1))


# --------------------------------------------------------------------------------------------
# The ten methods: (views, contrast call, its re-derivation, attack views, attack call, its
# re-derivation, gradient views of the attack). The calls are what the methods must compute.
# --------------------------------------------------------------------------------------------

Fn = Callable[[torch.Tensor], torch.Tensor]


def _nt_xent(z):  # acbench's model normalises its output; ACL's nt_xent normalises inside
    return info_nce(F.normalize(z, dim=-1), T)


def _acl_contrast(z):  # [t1, t2, adv1, adv2]: 1/2 (NT(clean pair) + NT(adversarial pair))
    return 0.5 * (_nt_xent(z[:2]) + _nt_xent(z[2:]))


def _acl_contrast_ref(z):
    return 0.5 * (nt_xent_acl(z[:2]) + nt_xent_acl(z[2:]))


def _rocl_pair(z):  # RoCL attack objective and regulariser on [adv, t2]
    return info_nce(z, T, detach_contrast=True)


def _rocl_variant(lam, w_release, hn):
    """(call, re-derivation) of an A-InfoNCE RoCL variant's 3-view term ([t1, t2, adv])."""

    def call(z):
        w = w_release / 2 if lam is not None else 1.0  # acbench's pair weight is half the release's
        return 2 * a_info_nce(
            z,
            adv=(2,),
            temperature=T,
            ip=lam,
            adv_weight=w,
            hn=hn,
            detach_contrast=True,
            hn_form="a-infonce",
        )

    return call, lambda z: rocl_released(z, lam, w_release, hn)


def _advcl_variant(lam, w, hn):
    """(contrast call, re-derivation, attack call, re-derivation) of an A-InfoNCE AdvCL variant."""
    return (
        lambda z: (
            ADVCL_FACTOR * a_info_nce_advcl(z, adv=0, temperature=T, ip=lam, adv_weight=w, hn=hn)
        ),
        lambda z: advcl_ainfonce_released(z, lam, w, hn),
        lambda z: ADVCL_FACTOR * a_info_nce_advcl(z, adv=0, temperature=T, adv_weight=w),
        lambda z: advcl_ainfonce_released(z, None, w, None),
    )


# The A-InfoNCE variants' released settings per dataset.
ROCL_SETTINGS = {  # (lam, release's adv_weight, hn)
    "rocl-ip": {"cifar10": (0.2, 1.0, None), "cifar100": (0.2, 1.0, None)},
    "rocl-hn": {"cifar10": (None, 1.0, (1.0, 0.12)), "cifar100": (None, 1.0, (1.0, 0.1))},
    "rocl-iphn": {"cifar10": (0.2, 1.0, (1.0, 0.12)), "cifar100": (0.2, 1.0, (1.0, 0.1))},
}
ADVCL_SETTINGS = {  # (lam0, adv_weight, hn); lam also takes adapted values
    "advcl-ip": {"cifar10": (0.2, 1.2, None), "cifar100": (0.3, 1.5, None)},
    "advcl-hn": {"cifar10": (None, 1.0, (1.0, 0.12)), "cifar100": (None, 1.0, (1.0, 0.01))},
    "advcl-iphn": {"cifar10": (0.2, 0.7, (1.0, 0.1)), "cifar100": (0.3, 1.5, (1.0, 0.01))},
}


def _cases():
    cases = {
        "simclr": (2, _nt_xent, nt_xent_acl, None),
        "acl": (4, _acl_contrast, _acl_contrast_ref, (2, _nt_xent, nt_xent_acl, (0, 1))),
        "rocl": (
            3,
            lambda z: 2 * info_nce(z, T, detach_contrast=True),
            lambda z: rocl_released(z, None, 1.0, None),
            (2, _rocl_pair, rocl_pair_released, (0,)),
        ),
        "advcl": (
            4,
            lambda z: ADVCL_FACTOR * info_nce(z, T),
            supcon_advcl,
            (4, lambda z: ADVCL_FACTOR * info_nce(z, T), supcon_advcl, (0,)),
        ),
    }
    for name, per in ROCL_SETTINGS.items():
        for ds, (lam, w, hn) in per.items():
            call, ref = _rocl_variant(lam, w, hn)
            cases[f"{name}/{ds}"] = (3, call, ref, (2, _rocl_pair, rocl_pair_released, (0,)))
    advcl_settings = dict(ADVCL_SETTINGS)
    advcl_settings["advcl-iphn"] = {**ADVCL_SETTINGS["advcl-iphn"], "adapted": (0.41, 0.7, (1.0, 0.1))}
    for name, per in advcl_settings.items():
        for ds, (lam, w, hn) in per.items():
            c, cref, att, aref = _advcl_variant(lam, w, hn)
            cases[f"{name}/{ds}"] = (4, c, cref, (4, att, aref, (0,)))
    return cases


CASES = _cases()


def _value_and_grad(fn: Fn, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z0.clone().requires_grad_(True)
    value = fn(z)
    (grad,) = torch.autograd.grad(value, z)
    return value.detach(), grad


def _assert_same(fn: Fn, ref: Fn, z0: torch.Tensor, grad_views) -> None:
    v1, g1 = _value_and_grad(fn, z0)
    v2, g2 = _value_and_grad(ref, z0)
    assert torch.allclose(v1, v2, rtol=0, atol=1e-10), (v1.item(), v2.item())
    idx = list(grad_views)
    assert g2[idx].abs().max() > 1e-6  # the re-derivation has a gradient to compare
    assert torch.allclose(g1[idx], g2[idx], rtol=0, atol=1e-10), (g1[idx] - g2[idx]).abs().max()


def test_all_ten_methods_are_covered():
    names = {k.split("/")[0] for k in CASES}
    assert names == {
        "simclr",
        "acl",
        "rocl",
        "rocl-ip",
        "rocl-hn",
        "rocl-iphn",
        "advcl",
        "advcl-ip",
        "advcl-hn",
        "advcl-iphn",
    }


@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_contrastive_term_equals_release(case, b):
    views, call, ref, _ = CASES[case]
    for seed in range(2):
        _assert_same(call, ref, unit(views, b, seed), range(views))


@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("case", sorted(k for k, c in CASES.items() if c[3] is not None))
def test_attack_objective_equals_release(case, b):
    views, call, ref, grad_views = CASES[case][3]
    for seed in range(2):
        _assert_same(call, ref, unit(views, b, 10 + seed), grad_views)


# --------------------------------------------------------------------------------------------
# The methods themselves: each registered method, built with its defaults on a dataset, runs its
# own contrastive term and attack objective (RoCL: and its regulariser), which must be the
# release's; their named options give the clean forms.
# --------------------------------------------------------------------------------------------


def _acl_pair(m, z):  # ACL.contrast takes a [2n, D] stack of two views
    return m.contrast(F.normalize(z, dim=-1).reshape(-1, z.shape[-1]), z.shape[1])


def _simclr(m, z):  # acbench's model normalises its output; ACL's nt_xent normalises inside
    return m.contrast(F.normalize(z, dim=-1))


def _method_cases():
    """id -> (method, dataset, (views, term, reference), (views, attack, reference, grad views)).

    ``term`` and ``attack`` take the method and z. AdvCL's attack objective is compared times
    T / 0.07 (the release's criterion; the attack follows the gradient's sign)."""
    cases = {
        "simclr": ("simclr", "cifar10", (2, _simclr, nt_xent_acl), None),
        "acl": (
            "acl",
            "cifar10",
            (4, lambda m, z: 0.5 * (_acl_pair(m, z[:2]) + _acl_pair(m, z[2:])), _acl_contrast_ref),
            (2, _acl_pair, nt_xent_acl, (0, 1)),
        ),
        "advcl": (
            "advcl",
            "cifar10",
            (4, lambda m, z: m.contrast(z), supcon_advcl),
            (4, lambda m, z: ADVCL_FACTOR * m.attack_contrast(z), supcon_advcl, (0,)),
        ),
    }
    rocl_attack = (2, lambda m, z: m.pair_loss(z), rocl_pair_released, (0,))
    cases["rocl"] = (
        "rocl",
        "cifar10",
        (3, lambda m, z: m.contrast(z), lambda z: rocl_released(z, None, 1.0, None)),
        rocl_attack,
    )
    for name, per in ROCL_SETTINGS.items():
        for ds, (lam, w, hn) in per.items():
            ref = partial(rocl_released, lam=lam, adv_weight=w, hn=hn)
            cases[f"{name}/{ds}"] = (name, ds, (3, lambda m, z: m.contrast(z), ref), rocl_attack)
    for name, per in ADVCL_SETTINGS.items():
        for ds, (lam, w, hn) in per.items():
            ref = partial(advcl_ainfonce_released, lam=lam, w=w, hn=hn)
            att_ref = partial(advcl_ainfonce_released, lam=None, w=w, hn=None)
            cases[f"{name}/{ds}"] = (
                name,
                ds,
                (4, lambda m, z: m.contrast(z), ref),
                (4, lambda m, z: ADVCL_FACTOR * m.attack_contrast(z), att_ref, (0,)),
            )
    return cases


METHOD_CASES = _method_cases()


def test_every_registered_method_has_a_fidelity_case():
    families = {"methods.simclr", "methods.acl", "methods.rocl", "methods.advcl"}  # the later ones: own tests
    builtin = {n for n in list_methods() if method_class(n).__module__ in families}
    assert {c[0] for c in METHOD_CASES.values()} == builtin
    assert len(builtin) == 10


@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("case", sorted(METHOD_CASES))
def test_method_contrastive_term_is_the_release(case, b):
    name, ds, (views, term, ref), _ = METHOD_CASES[case]
    m = get_method(name, dataset=ds)
    for seed in range(2):
        _assert_same(lambda z: term(m, z), ref, unit(views, b, 20 + seed), range(views))


@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("case", sorted(k for k, c in METHOD_CASES.items() if c[3] is not None))
def test_method_attack_objective_is_the_release(case, b):
    name, ds, _, (views, attack, ref, grad_views) = METHOD_CASES[case]
    m = get_method(name, dataset=ds)
    for seed in range(2):
        _assert_same(lambda z: attack(m, z), ref, unit(views, b, 30 + seed), grad_views)


@pytest.mark.parametrize("name", ["rocl", "rocl-ip", "rocl-hn", "rocl-iphn"])
def test_rocl_regulariser_is_the_release(name):
    """The regulariser is the attack's NT_xent on [adv, t2]; both views get its gradient."""
    m = get_method(name)
    assert m.params.reg_forward == "separate" and m.params.reg_weight == 1 / 256
    for b in BATCHES:
        _assert_same(m.pair_loss, rocl_pair_released, unit(2, b, 40), (0, 1))


@pytest.mark.parametrize("name", ["advcl-ip", "advcl-iphn"])
def test_advcl_adapted_lam_is_the_release(name):
    """After the warm-up lam is a 0-d device tensor: the release's form with that lam."""
    m = get_method(name)
    _, w, hn = ADVCL_SETTINGS[name]["cifar10"]
    lam = torch.tensor(0.41, dtype=torch.float64)
    ref = lambda z: advcl_ainfonce_released(z, 0.41, w, hn)  # noqa: E731
    for b in BATCHES:
        _assert_same(lambda z: m.contrast(z, lam), ref, unit(4, b, 50), range(4))


def _same_value_and_grad(fn, ref, z0) -> None:
    v1, g1 = _value_and_grad(fn, z0)
    v2, g2 = _value_and_grad(ref, z0)
    assert torch.allclose(v1, v2, rtol=0, atol=1e-12) and torch.allclose(g1, g2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ds", ["cifar10", "cifar100"])
def test_rocl_named_options_give_the_clean_forms(ds):
    """detach_contrast=False: plain gradients in the contrast, attack and regulariser;
    hn_form="hcl": HCL's hard-negative weights (the variants' forms before the released defaults)."""
    z3, z2 = unit(3, 6, 60), unit(2, 6, 61)
    clean = get_method("rocl", dataset=ds, detach_contrast=False)
    _same_value_and_grad(clean.contrast, lambda z: 2 * info_nce(z, T), z3)
    _same_value_and_grad(clean.pair_loss, lambda z: info_nce(z, T), z2)
    assert (_value_and_grad(clean.pair_loss, z2)[1] - _value_and_grad(_rocl_pair, z2)[1]).abs().max() > 1e-3
    for name, per in ROCL_SETTINGS.items():
        lam, w_release, hn = per[ds]
        m = get_method(name, dataset=ds, detach_contrast=False, hn_form="hcl")
        w = w_release / 2 if lam is not None else 1.0
        today = partial(a_info_nce, adv=(2,), temperature=T, ip=lam, adv_weight=w, hn=hn)
        _same_value_and_grad(m.contrast, lambda z: 2 * today(z), z3)  # noqa: B023 (called here)
        _same_value_and_grad(m.pair_loss, lambda z: info_nce(z, T), z2)


@pytest.mark.parametrize("ds", ["cifar10", "cifar100"])
def test_advcl_named_options_give_the_clean_forms(ds):
    """loss_form="clean": F a_info_nce with HCL's hard negatives; attack_form="clean": info_nce."""
    z = unit(4, 6, 70)
    for name, per in ADVCL_SETTINGS.items():
        lam, w, hn = per[ds]
        m = get_method(name, dataset=ds, loss_form="clean", attack_form="clean")
        today = partial(a_info_nce, adv=(0,), temperature=T, ip=lam, adv_weight=w, hn=hn)
        _same_value_and_grad(m.contrast, lambda z: ADVCL_FACTOR * today(z), z)  # noqa: B023 (called here)
        _same_value_and_grad(m.attack_contrast, lambda z: info_nce(z, T), z)
        released = get_method(name, dataset=ds)
        assert (_value_and_grad(released.attack_contrast, z)[1] - _value_and_grad(m.attack_contrast, z)[1]).abs().max() > 1e-3
        if hn is not None:  # without hard negatives the two contrastive forms coincide (advcl-ip)
            assert (_value_and_grad(released.contrast, z)[0] - _value_and_grad(m.contrast, z)[0]).abs() > 1e-3


def test_form_options_are_checked():
    with pytest.raises(UnknownName, match="unknown hn_form 'hcll' \\(did you mean 'hcl'\\?\\)"):
        get_method("rocl-hn", hn_form="hcll")
    with pytest.raises(UnknownName, match="unknown loss_form 'release' \\(did you mean 'released'\\?\\)"):
        get_method("advcl-iphn", loss_form="release")
    with pytest.raises(UnknownName, match="unknown attack_form"):
        get_method("advcl-ip", attack_form="info_nce")
    with pytest.raises(UnknownName, match="unknown reg_forward 'shard'"):
        get_method("rocl", reg_forward="shard")
    for name, options in {
        "rocl": {"detach_contrast": True, "reg_forward": "separate", "sum_positives": True},
        "rocl-iphn": {"detach_contrast": True, "reg_forward": "separate", "hn_form": "a-infonce"},
        "advcl-hn": {"loss_form": "released", "attack_form": "released"},
    }.items():
        params = get_method(name).describe()["params"]
        assert {k: params[k] for k in options} == options, name


# --------------------------------------------------------------------------------------------
# What the released forms change, and their options' contracts
# --------------------------------------------------------------------------------------------


def test_released_forms_differ_from_the_clean_ones():
    """Each released form is a real change (else the defaults would not need to move)."""
    z3, z4 = unit(3, 6, 1), unit(4, 6, 1)
    pairs = [
        (
            lambda z: a_info_nce(z, adv=(2,), ip=0.2, adv_weight=0.5, detach_contrast=True),
            lambda z: a_info_nce(z, adv=(2,), ip=0.2, adv_weight=0.5),
            z3,
        ),
        (
            lambda z: a_info_nce(z, adv=(2,), hn=(1.0, 0.12), hn_form="a-infonce"),
            lambda z: a_info_nce(z, adv=(2,), hn=(1.0, 0.12)),
            z3,
        ),
        (lambda z: a_info_nce_advcl(z, adv_weight=1.2), lambda z: info_nce(z), z4),
        (
            lambda z: a_info_nce_advcl(z, hn=(1.0, 0.12)),
            lambda z: a_info_nce(z, hn=(1.0, 0.12)),
            z4,
        ),
    ]
    for released, clean, z in pairs:
        (_, g1), (_, g2) = _value_and_grad(released, z), _value_and_grad(clean, z)
        assert (g1 - g2).abs().max() > 1e-3


@pytest.mark.parametrize("hn", [None, (1.0, 0.1)])
@pytest.mark.parametrize("form", ["hcl", "a-infonce"])
def test_detach_contrast_keeps_the_value(hn, form):
    z = unit(3, 5, 2)
    kw = dict(adv=(2,), ip=0.3, adv_weight=0.5, hn=hn, hn_form=form)
    a, b = a_info_nce(z, **kw, detach_contrast=True), a_info_nce(z, **kw)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_detach_contrast_plain_terms_move_only_their_anchor():
    """Without HN, a detached term's gradient reaches its anchor row only: perturbing the loss of
    the rows of one view by that view's embedding alone reproduces the gradient on it."""
    z = unit(3, 4, 3)
    _, g = _value_and_grad(lambda x: a_info_nce(x, adv=(2,), detach_contrast=True), z)
    # view 0's gradient equals that of its own anchor rows with everything else constant
    x = z.clone()
    x0 = z[0].clone().requires_grad_(True)
    rows = torch.cat([x0[None], x[1:]])
    s = rows.reshape(12, -1)[:4] @ x.reshape(12, -1).T / T  # anchors of view 0 against constants
    self_mask = torch.zeros(4, 12, dtype=torch.bool)
    self_mask[range(4), range(4)] = True
    log_den = s.masked_fill(self_mask, float("-inf")).logsumexp(1)
    loss = sum(log_den[i] - s[i, 4 * u + i] for i in range(4) for u in (1, 2)) / (3 * 4 * 2)
    (g0,) = torch.autograd.grad(loss, x0)
    assert torch.allclose(g[0], g0, atol=1e-12)


def test_advcl_form_with_ip_equals_a_info_nce():
    z = unit(4, 5, 4)
    lam = torch.tensor(0.37, dtype=torch.float64)  # adaptive lam: a 0-d tensor
    v1, g1 = _value_and_grad(lambda x: a_info_nce_advcl(x, ip=lam, adv_weight=1.2), z)
    v2, g2 = _value_and_grad(lambda x: a_info_nce(x, adv=(0,), ip=lam, adv_weight=1.2), z)
    assert torch.allclose(v1, v2, atol=1e-12) and torch.allclose(g1, g2, atol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"ip": 0.2, "hn": (1.0, 0.1)}])
def test_advcl_form_adv_index_is_a_view_permutation(kw):
    z = unit(4, 5, 5)
    perm = [2, 0, 1, 3]  # view 2 of z is view 0 of z[perm]
    v1, g1 = _value_and_grad(lambda x: a_info_nce_advcl(x, adv=2, adv_weight=1.3, **kw), z)
    v2, g2 = _value_and_grad(lambda x: a_info_nce_advcl(x[perm], adv=0, adv_weight=1.3, **kw), z)
    assert torch.allclose(v1, v2, atol=1e-12) and torch.allclose(g1, g2, atol=1e-12)


def test_advcl_attack_form_weights_w_and_w_squared():
    """ori_SupConLoss(stop_grad=False): the adversarial-anchored term counts w + w^2 times."""
    z = unit(4, 3, 6)
    f = [a_info_nce_advcl(z, adv_weight=w) for w in (0.0, 1.0, 2.0)]
    # L(w) = c + (w + w^2) d: L(2) - L(0) = 3 (L(1) - L(0))
    assert torch.allclose(f[2] - f[0], 3 * (f[1] - f[0]), atol=1e-12)
    assert (f[1] - f[0]).abs() > 1e-3


def test_hn_form_is_checked():
    z = unit(2, 3, 0)
    with pytest.raises(UnknownName, match="did you mean 'a-infonce'"):
        a_info_nce(z, hn=(1.0, 0.1), hn_form="a-info-nce")


@pytest.mark.parametrize("adv", [(0,), 4, -1, True])
def test_advcl_form_validation(adv):
    with pytest.raises(ValueError, match="adv"):
        a_info_nce_advcl(unit(4, 3, 0), adv=adv)


def test_released_forms_on_meta_never_read_values():
    """No host syncs (the step must run on the meta device): value and backward."""
    meta = torch.device("meta")
    z = torch.empty(4, 8, 16, device=meta, requires_grad=True)
    lam = torch.empty((), device=meta)
    for loss in (
        a_info_nce_advcl(z, ip=lam, adv_weight=0.7, hn=(1.0, 0.1)),
        a_info_nce_advcl(z, adv_weight=1.2),
        a_info_nce(
            z[:3],
            adv=(2,),
            ip=lam,
            adv_weight=0.5,
            hn=(1.0, 0.1),
            detach_contrast=True,
            hn_form="a-infonce",
        ),
    ):
        loss.backward()
        assert loss.device.type == "meta"


def test_released_forms_compute_in_fp32_under_autocast():
    z = unit(4, 6, 7).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = a_info_nce_advcl(z, ip=0.2, adv_weight=0.7, hn=(1.0, 0.1))
    assert a.dtype == torch.float32
    b = a_info_nce_advcl(z.double(), ip=0.2, adv_weight=0.7, hn=(1.0, 0.1))
    assert torch.allclose(a.double(), b, atol=1e-4)
