"""Tests for methods/losses.py against slow, literal reference implementations (docs/methods.md)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from methods.losses import a_info_nce, info_nce

DT = torch.float64


def make_z(v: int, b: int, d: int = 6, seed: int = 0, dtype=DT) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(v, b, d, generator=g, dtype=dtype), dim=-1)
    return z.requires_grad_(True)


# --------------------------------------------------------------------------------------------
# Slow reference: loops over anchors a and positives b, literally following docs/methods.md.
# Rows are indexed a = (view, instance); the scalar algebra is done on 0-d tensors so that
# autograd (with explicit .detach() for the stop-gradient terms) gives reference gradients.
# --------------------------------------------------------------------------------------------


class Ref:
    def __init__(self, z: torch.Tensor, temperature: float, hn=None):
        self.z = z
        self.V, self.B, _ = z.shape
        self.T = temperature
        self.hn = hn
        self.rows = [(v, i) for v in range(self.V) for i in range(self.B)]
        self._den_cache: dict = {}
        self._s_cache: dict = {}

    def s(self, a, c, sg: bool) -> torch.Tensor:
        key = (a, c, sg)
        if key not in self._s_cache:
            za = self.z[a[0], a[1]]
            zc = self.z[c[0], c[1]]
            if sg:
                zc = zc.detach()  # every non-anchor embedding detached
            self._s_cache[key] = torch.dot(za, zc) / self.T
        return self._s_cache[key]

    def positives(self, a):
        return [(u, a[1]) for u in range(self.V) if u != a[0]]

    def negatives(self, a):
        return [(u, j) for u in range(self.V) for j in range(self.B) if j != a[1]]

    def denominator(self, a, sg: bool) -> torch.Tensor:
        key = (a, sg)
        if key in self._den_cache:
            return self._den_cache[key]
        if self.hn is None:
            den = sum(torch.exp(self.s(a, c, sg)) for c in self.rows if c != a)
        else:
            beta, tau_plus = self.hn
            P = self.positives(a)
            negs = self.negatives(a)
            N = len(negs)
            assert N == self.V * (self.B - 1)
            pos_a = sum(torch.exp(self.s(a, p, sg)) for p in P) / len(P)
            norm = sum(torch.exp(beta * self.s(a, k, sg)) for k in negs) / N
            reweighted = sum(
                torch.exp(beta * self.s(a, k, sg)) / norm * torch.exp(self.s(a, k, sg))
                for k in negs
            )
            ng = (-tau_plus * N * pos_a + reweighted) / (1 - tau_plus)
            ng = torch.maximum(ng, torch.tensor(N * math.exp(-1 / self.T), dtype=ng.dtype))
            den = pos_a + ng
        self._den_cache[key] = den
        return den

    def term(self, a, b, sg: bool = False) -> torch.Tensor:
        return -torch.log(torch.exp(self.s(a, b, sg)) / self.denominator(a, sg))


def ref_info_nce(z, temperature):
    r = Ref(z, temperature)
    V, B = r.V, r.B
    total = 0.0
    for a in r.rows:
        total = total + sum(r.term(a, b) for b in r.positives(a)) / (V - 1)
    return total / (V * B)


def ref_a_info_nce(z, adv, temperature, ip, adv_weight, hn, pair_filter=None):
    """Literal A-InfoNCE. ``pair_filter(a, b)`` (optional) keeps only the selected M_ab terms."""
    r = Ref(z, temperature, hn)
    V, B = r.V, r.B
    is_adv = [u in adv for u in range(V)]
    total = 0.0
    for a in r.rows:
        acc = 0.0
        for b in r.positives(a):
            if pair_filter is not None and not pair_filter(a, b):
                continue
            if is_adv[a[0]] == is_adv[b[0]]:  # clean-clean or adv-adv: weight 1
                m_ab = r.term(a, b)
            elif ip is None:
                m_ab = adv_weight * r.term(a, b)
            else:
                c, v = (a, b) if not is_adv[a[0]] else (b, a)
                m_ab = adv_weight * (ip * r.term(c, v, sg=True) + (1 - ip) * r.term(v, c, sg=True))
            acc = acc + m_ab
        total = total + acc / (V - 1)
    return total / (V * B)


def value_and_grad(fn, z):
    z = z.detach().clone().requires_grad_(True)
    out = fn(z)
    (g,) = torch.autograd.grad(out, z)
    return out.detach(), g


# --------------------------------------------------------------------------------------------
# info_nce
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("B", [2, 3, 5])
@pytest.mark.parametrize("V", [2, 3, 4])
def test_info_nce_matches_reference(V, B, T):
    z = make_z(V, B, seed=100 * V + B)
    val, grad = value_and_grad(lambda x: info_nce(x, temperature=T), z)
    rval, rgrad = value_and_grad(lambda x: ref_info_nce(x, T), z)
    assert val.dtype == DT
    assert torch.allclose(val, rval, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad, rgrad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("T", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("B", [2, 7, 32])
def test_info_nce_v2_is_simclr_nt_xent(B, T):
    z = make_z(2, B, d=16, seed=B)

    def nt_xent(x):  # SimCLR: 2B x 2B logits, self-similarity removed, cross-entropy
        out = torch.cat([x[0], x[1]], dim=0)
        logits = out @ out.T / T
        logits = logits.masked_fill(torch.eye(2 * B, dtype=torch.bool), float("-inf"))
        labels = torch.cat([torch.arange(B) + B, torch.arange(B)])
        return F.cross_entropy(logits, labels)

    val, grad = value_and_grad(lambda x: info_nce(x, T), z)
    rval, rgrad = value_and_grad(nt_xent, z)
    assert torch.allclose(val, rval, rtol=1e-12)
    assert torch.allclose(grad, rgrad, rtol=1e-10, atol=1e-12)


def test_info_nce_perfect_alignment_limit():
    # identical views, orthogonal instances: l_ab = -log(e^{1/T} / (e^{1/T} + (V(B-1)) e^0))
    V, B, T = 3, 4, 0.2
    z = torch.eye(B, dtype=DT)[None].expand(V, B, B).contiguous()
    expected = -math.log(math.exp(1 / T) / ((V - 1) * math.exp(1 / T) + V * (B - 1)))
    assert math.isclose(info_nce(z, T).item(), expected, rel_tol=1e-12)


# --------------------------------------------------------------------------------------------
# a_info_nce against the reference
# --------------------------------------------------------------------------------------------

ADV_SETS = {2: [(0,), (1,)], 3: [(0,), (1, 2)], 4: [(0,), (0, 3), (1, 2)]}
WEIGHTS = [1.0, 0.5, 1.5]
BS = [2, 3, 4]
HNS = [None, (1.0, 0.1), (2.0, 0.0)]
IPS = [None, 0.0, 0.2, 1.0]
TS = [0.1, 0.5, 1.0]


def _grid():
    # full product over V x T x ip x hn; B, adv set and adv_weight rotate through their values
    cases = []
    for k, (V, T, ip, hn) in enumerate(itertools.product([2, 3, 4], TS, IPS, HNS)):
        adv = ADV_SETS[V][k % len(ADV_SETS[V])]
        w = WEIGHTS[(k // 2) % len(WEIGHTS)]
        B = BS[(k // 3) % len(BS)]
        cases.append(
            pytest.param(V, B, T, adv, w, ip, hn, id=f"V{V}-B{B}-T{T}-adv{adv}-w{w}-ip{ip}-hn{hn}")
        )
    return cases


@pytest.mark.parametrize("V,B,T,adv,w,ip,hn", _grid())
def test_a_info_nce_matches_reference(V, B, T, adv, w, ip, hn):
    z = make_z(V, B, seed=7 * V + 3 * B)
    kw = dict(adv=adv, temperature=T, ip=ip, adv_weight=w, hn=hn)
    val, grad = value_and_grad(lambda x: a_info_nce(x, **kw), z)
    rval, rgrad = value_and_grad(lambda x: ref_a_info_nce(x, adv, T, ip, w, hn), z)
    assert torch.allclose(val, rval, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad, rgrad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("ip", [None, 0.3])
@pytest.mark.parametrize("w", [0.0, 0.7, 2.0])
@pytest.mark.parametrize(
    "V,adv", [(2, ()), (2, (0, 1)), (3, (2,)), (3, (0, 2)), (4, (3,)), (4, (0, 1, 2)), (4, [1, 3])]
)
def test_a_info_nce_adv_sets_and_weights(V, adv, w, ip):
    B, T, hn = 3, 0.5, (1.0, 0.12)
    z = make_z(V, B, seed=11 * V + len(adv))
    kw = dict(adv=adv, temperature=T, ip=ip, adv_weight=w, hn=hn)
    val, grad = value_and_grad(lambda x: a_info_nce(x, **kw), z)
    rval, rgrad = value_and_grad(lambda x: ref_a_info_nce(x, tuple(adv), T, ip, w, hn), z)
    assert torch.allclose(val, rval, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad, rgrad, rtol=1e-8, atol=1e-10)


def test_a_info_nce_int_adv_and_float32():
    z = make_z(3, 4, seed=1, dtype=torch.float32)
    a = a_info_nce(z, adv=1, ip=0.2, adv_weight=1.3, hn=(1.0, 0.1))
    b = a_info_nce(z, adv=(1,), ip=0.2, adv_weight=1.3, hn=(1.0, 0.1))
    r = ref_a_info_nce(z.detach().double(), (1,), 0.5, 0.2, 1.3, (1.0, 0.1))
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
    assert torch.allclose(a.double(), r, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# special cases: defaults == info_nce, HN == HCL
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("V,adv", [(2, (0,)), (3, (0,)), (4, (0, 2)), (4, ())])
def test_a_info_nce_defaults_equal_info_nce(V, adv, T):
    z = make_z(V, 6, d=8, seed=V)
    val, grad = value_and_grad(lambda x: a_info_nce(x, adv=adv, temperature=T), z)
    rval, rgrad = value_and_grad(lambda x: info_nce(x, temperature=T), z)
    assert torch.allclose(val, rval, rtol=1e-12)
    assert torch.allclose(grad, rgrad, rtol=1e-10, atol=1e-14)
    # and the signature defaults are adv=(0,), T=0.5
    assert torch.allclose(a_info_nce(z), info_nce(z), rtol=1e-12)


def hcl_loss(out_1, out_2, T, beta, tau_plus):
    """HCL (Robinson et al., ICLR 2021), eq. for the hard-negative debiased loss, batch form."""
    B = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(out @ out.T / T)
    mask = torch.ones(2 * B, 2 * B, dtype=torch.bool)
    for i in range(B):
        mask[i, i] = mask[i, i + B] = mask[i + B, i] = mask[i + B, i + B] = False
    neg = neg.masked_select(mask).view(2 * B, -1)  # [2B, 2B-2]
    pos = torch.exp((out_1 * out_2).sum(-1) / T)
    pos = torch.cat([pos, pos], dim=0)
    N = 2 * B - 2
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    ng = (-tau_plus * N * pos + reweight_neg) / (1 - tau_plus)
    ng = torch.clamp(ng, min=N * math.exp(-1 / T))
    return (-torch.log(pos / (pos + ng))).mean()


@pytest.mark.parametrize("T", [0.1, 0.5])
@pytest.mark.parametrize("beta,tau_plus", [(1.0, 0.1), (2.0, 0.0), (0.5, 0.5), (1.0, 0.12)])
@pytest.mark.parametrize("B", [3, 16])
def test_hn_v2_equals_hcl(B, beta, tau_plus, T):
    z = make_z(2, B, d=8, seed=B)
    val, grad = value_and_grad(lambda x: a_info_nce(x, temperature=T, hn=(beta, tau_plus)), z)
    rval, rgrad = value_and_grad(lambda x: hcl_loss(x[0], x[1], T, beta, tau_plus), z)
    assert torch.allclose(val, rval, rtol=1e-10)
    assert torch.allclose(grad, rgrad, rtol=1e-8, atol=1e-12)


def test_hn_clamp_is_active_and_matches_hcl():
    # large tau_plus drives the debiased negative term below N e^{-1/T}, so the clamp decides
    z = make_z(2, 4, d=3, seed=5)
    T, beta, tau_plus = 0.5, 0.0, 0.9
    val = a_info_nce(z, temperature=T, hn=(beta, tau_plus))
    ref = hcl_loss(z[0], z[1], T, beta, tau_plus)
    assert torch.allclose(val, ref, rtol=1e-12)
    # the clamped HN loss is different from the un-debiased one
    assert not torch.allclose(val, a_info_nce(z, temperature=T, hn=(beta, 0.0)))


def test_hn_beta0_tau0_v2_equals_info_nce():
    # no reweighting, no debiasing, one positive: HCL reduces to NT-Xent
    z = make_z(2, 6, seed=3)
    assert torch.allclose(a_info_nce(z, hn=(0.0, 0.0)), info_nce(z), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# gradient routing of inferior positives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hn", [None, (1.0, 0.1)])
@pytest.mark.parametrize("adv_view", [0, 1])
def test_ip_v2_routes_gradient(adv_view, hn):
    # V = 2, one clean and one adversarial view: every positive term is a clean-adv term
    clean_view = 1 - adv_view
    z = make_z(2, 5, seed=9)
    _, g0 = value_and_grad(
        lambda x: a_info_nce(x, adv=(adv_view,), ip=0.0, adv_weight=1.3, hn=hn), z
    )
    assert torch.count_nonzero(g0[clean_view]) == 0  # lam = 0: nothing reaches clean views
    assert g0[adv_view].abs().sum() > 1e-3
    _, g1 = value_and_grad(
        lambda x: a_info_nce(x, adv=(adv_view,), ip=1.0, adv_weight=1.3, hn=hn), z
    )
    assert torch.count_nonzero(g1[adv_view]) == 0  # lam = 1: nothing reaches adversarial views
    assert g1[clean_view].abs().sum() > 1e-3
    _, gh = value_and_grad(lambda x: a_info_nce(x, adv=(adv_view,), ip=0.5, hn=hn), z)
    assert gh[adv_view].abs().sum() > 1e-3 and gh[clean_view].abs().sum() > 1e-3


def _not_cross(adv):
    return lambda a, b: (a[0] in adv) == (b[0] in adv)


@pytest.mark.parametrize("hn", [None, (1.0, 0.1)])
@pytest.mark.parametrize("T", [0.1, 0.5])
@pytest.mark.parametrize("V,adv", [(3, (0,)), (4, (0, 1))])
def test_ip_clean_adv_terms_send_no_gradient_to_the_inferior_side(V, adv, T, hn):
    # With lam = 0 the gradient w.r.t. the clean views must equal that of the loss with every
    # clean-adv term removed (the clean-clean and adv-adv terms keep their full gradient, negatives
    # included); with lam = 1 the same holds for the adversarial views.
    B, w = 3, 1.7
    clean = [u for u in range(V) if u not in adv]
    advl = list(adv)
    z = make_z(V, B, seed=21)
    _, g_rest = value_and_grad(lambda x: ref_a_info_nce(x, adv, T, None, w, hn, _not_cross(adv)), z)

    _, g0 = value_and_grad(
        lambda x: a_info_nce(x, adv=adv, temperature=T, ip=0.0, adv_weight=w, hn=hn), z
    )
    assert torch.allclose(g0[clean], g_rest[clean], rtol=1e-8, atol=1e-12)
    assert not torch.allclose(g0[advl], g_rest[advl], rtol=1e-4, atol=1e-6)

    _, g1 = value_and_grad(
        lambda x: a_info_nce(x, adv=adv, temperature=T, ip=1.0, adv_weight=w, hn=hn), z
    )
    assert torch.allclose(g1[advl], g_rest[advl], rtol=1e-8, atol=1e-12)
    assert not torch.allclose(g1[clean], g_rest[clean], rtol=1e-4, atol=1e-6)

    # without ip the clean-adv terms do reach both sides, so the check above can fail
    _, g_plain = value_and_grad(
        lambda x: a_info_nce(x, adv=adv, temperature=T, adv_weight=w, hn=hn), z
    )
    assert not torch.allclose(g_plain[clean], g_rest[clean], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(g_plain[advl], g_rest[advl], rtol=1e-4, atol=1e-6)


def test_ip_sg_terms_only_move_their_anchor():
    # The clean-adv part of the loss at lam: its gradient w.r.t. the clean view of instance i is
    # 2 w lam / (V B (V-1)) * d l_{(c,i),(v,i)} / d z_(c,i) with all other rows frozen.
    V, B, T, w, lam = 2, 4, 0.5, 1.2, 0.3
    z = make_z(V, B, seed=4)
    _, g = value_and_grad(lambda x: a_info_nce(x, adv=(0,), temperature=T, ip=lam, adv_weight=w), z)
    for i in range(B):
        zc = z[1, i].detach().clone().requires_grad_(True)
        others = z.detach().clone()
        s = (others.reshape(-1, z.shape[-1]) @ zc) / T  # s_{(c,i), .}
        a = 1 * B + i
        s = torch.cat([s[:a], s[a + 1 :]])
        pos = (others[0, i] @ zc) / T
        l_cv = -(pos - torch.logsumexp(s, 0))
        (gc,) = torch.autograd.grad(l_cv, zc)
        expected = 2 * w * lam / (V * B * (V - 1)) * gc
        assert torch.allclose(g[1, i], expected, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# symmetries
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(adv=(0,), ip=0.2, adv_weight=1.5),
        dict(adv=(1, 2), hn=(1.0, 0.1)),
        dict(adv=(2,), ip=0.7, adv_weight=0.5, hn=(2.0, 0.0)),
    ],
)
def test_invariance_to_instance_permutation(kw):
    V, B = 3, 7
    z = make_z(V, B, seed=13)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(0))
    val, grad = value_and_grad(lambda x: a_info_nce(x, **kw), z)
    pval, pgrad = value_and_grad(lambda x: a_info_nce(x, **kw), z.detach()[:, perm])
    assert torch.allclose(val, pval, rtol=1e-12)
    assert torch.allclose(grad[:, perm], pgrad, rtol=1e-10, atol=1e-14)
    assert torch.allclose(info_nce(z), info_nce(z[:, perm]), rtol=1e-12)


def test_invariance_to_view_permutation_with_relabelled_adv():
    V, B = 4, 5
    z = make_z(V, B, seed=17)
    perm = [2, 0, 3, 1]  # new view k is old view perm[k]
    adv_old = (0, 3)
    adv_new = tuple(k for k in range(V) if perm[k] in adv_old)
    kw = dict(ip=0.25, adv_weight=1.3, hn=(1.0, 0.1))
    a = a_info_nce(z, adv=adv_old, **kw)
    b = a_info_nce(z[perm], adv=adv_new, **kw)
    assert torch.allclose(a, b, rtol=1e-12)
    # relabelling the adversarial set without permuting the views does change the loss
    assert not torch.allclose(a, a_info_nce(z, adv=(1, 2), **kw))


# --------------------------------------------------------------------------------------------
# mixed precision, devices
# --------------------------------------------------------------------------------------------


def test_bf16_autocast_computes_softmax_in_fp32():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 32)
    x = torch.randn(2 * 64, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        assert h.dtype == torch.bfloat16
        z = F.normalize(h.float(), dim=-1).to(torch.bfloat16).reshape(2, 64, 32)
        loss = a_info_nce(z, ip=0.2, adv_weight=1.2, hn=(1.0, 0.1))
        loss_plain = info_nce(z, temperature=0.1)
    assert loss.dtype == torch.float32 and loss_plain.dtype == torch.float32
    # identical to computing on the same (bf16-rounded) embeddings in fp32 without autocast
    zf = z.float()
    assert torch.allclose(loss, a_info_nce(zf, ip=0.2, adv_weight=1.2, hn=(1.0, 0.1)), rtol=1e-6)
    assert torch.allclose(loss_plain, info_nce(zf, temperature=0.1), rtol=1e-6)
    loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    z = make_z(4, 16, d=32, seed=2, dtype=torch.float32)
    kw = dict(adv=(0,), ip=0.2, adv_weight=1.2, hn=(1.0, 0.1), temperature=0.5)
    v_cpu, g_cpu = value_and_grad(lambda x: a_info_nce(x, **kw), z)
    v_gpu, g_gpu = value_and_grad(lambda x: a_info_nce(x, **kw), z.detach().cuda())
    assert torch.allclose(v_cpu, v_gpu.cpu(), rtol=1e-5)
    assert torch.allclose(g_cpu, g_gpu.cpu(), rtol=1e-4, atol=1e-6)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        v_amp = a_info_nce(z.detach().cuda().bfloat16(), **kw)
    assert v_amp.dtype == torch.float32
    assert torch.allclose(v_amp.cpu(), a_info_nce(z.detach().bfloat16().float(), **kw), rtol=1e-4)
    assert torch.allclose(info_nce(z).detach(), info_nce(z.detach().cuda()).cpu(), rtol=1e-5)


def test_large_batch_is_finite_at_low_temperature():
    z = make_z(4, 128, d=32, seed=0, dtype=torch.float32)
    for fn in (
        lambda x: info_nce(x, 0.05),
        lambda x: a_info_nce(x, adv=(0,), temperature=0.05, ip=0.2, adv_weight=1.5, hn=(2.0, 0.1)),
    ):
        val, grad = value_and_grad(fn, z)
        assert torch.isfinite(val) and torch.isfinite(grad).all()


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "z,kw,match",
    [
        (torch.randn(4, 8), {}, "3-D"),
        (torch.randn(1, 4, 8), {}, "V >= 2"),
        (torch.randn(2, 1, 8), {}, "B >= 2"),
        (torch.randn(2, 4, 0), {}, "embedding dimension"),
        (torch.ones(2, 4, 8, dtype=torch.long), {}, "floating-point"),
        (torch.randn(2, 4, 8), dict(temperature=0.0), "temperature"),
        (torch.randn(2, 4, 8), dict(temperature=-1.0), "temperature"),
        (torch.randn(2, 4, 8), dict(temperature=float("nan")), "temperature"),
        (torch.randn(2, 4, 8), dict(adv=(2,)), "out of range"),
        (torch.randn(2, 4, 8), dict(adv=(-1,)), "out of range"),
        (torch.randn(3, 4, 8), dict(adv=(1, 1)), "more than once"),
        (torch.randn(3, 4, 8), dict(adv=(0.5,)), "integer"),
        (torch.randn(3, 4, 8), dict(adv="0"), "sequence"),
        (torch.randn(2, 4, 8), dict(ip=1.5), r"\[0, 1\]"),
        (torch.randn(2, 4, 8), dict(ip=-0.1), r"\[0, 1\]"),
        (torch.randn(2, 4, 8), dict(hn=(1.0, 1.0)), "tau_plus"),
        (torch.randn(2, 4, 8), dict(hn=(1.0, -0.1)), "tau_plus"),
        (torch.randn(2, 4, 8), dict(hn=(1.0,)), "pair"),
        (torch.randn(2, 4, 8), dict(hn=(float("inf"), 0.1)), "beta"),
        (torch.randn(2, 4, 8), dict(adv_weight=-1.0), "adv_weight"),
    ],
)
def test_a_info_nce_validation(z, kw, match):
    with pytest.raises(ValueError, match=match):
        a_info_nce(z, **kw)


@pytest.mark.parametrize(
    "z,T,match",
    [
        (torch.randn(2, 8), 0.5, "3-D"),
        (torch.randn(1, 3, 8), 0.5, "V >= 2"),
        (torch.randn(2, 1, 8), 0.5, "B >= 2"),
        (torch.randn(2, 3, 8), 0.0, "temperature"),
        (torch.randn(2, 3, 8), True, "temperature"),
    ],
)
def test_info_nce_validation(z, T, match):
    with pytest.raises(ValueError, match=match):
        info_nce(z, temperature=T)


def test_non_tensor_rejected():
    with pytest.raises(TypeError):
        info_nce([[[1.0]]])  # type: ignore[arg-type]


def test_info_nce_detach_contrast_moves_only_anchors():
    """RoCL's released form: same value; gradient = that of sum_a l_a(z_a, stopgrad(others))."""
    torch.manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(3, 5, 8, dtype=torch.float64), dim=-1)
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    a = info_nce(z1, 0.5, detach_contrast=True)
    b = info_nce(z2, 0.5)
    assert torch.allclose(a, b)
    a.backward()
    b.backward()
    assert not torch.allclose(z1.grad, z2.grad)
    # reference: each anchor row's loss with every other embedding detached
    flat = z.reshape(15, 8)
    grads = torch.zeros_like(flat)
    for i in range(15):
        anchor = flat[i].clone().requires_grad_(True)
        keys = flat.clone()
        s = keys @ anchor / 0.5
        s_self_masked = torch.cat([s[:i], s[i + 1 :]])
        log_den = torch.logsumexp(s_self_masked, 0)
        pos = [j for j in range(15) if j % 5 == i % 5 and j != i]
        loss = sum(log_den - s[j] for j in pos) / (2 * 15)
        (g,) = torch.autograd.grad(loss, anchor)
        grads[i] = g
    assert torch.allclose(z1.grad.reshape(15, 8), grads)
