"""Contrastive losses used by acbench (docs/methods.md).

All losses take ``z`` of shape ``[V, B, D]``: ``V`` views of the same ``B`` instances, each row
already L2-normalised by the caller (the functions do not renormalise). Write ``a = (v, i)`` for
view ``v`` of instance ``i`` and ``s_ab = <z_a, z_b> / T``. The positives of ``a`` are the other
``V - 1`` views of instance ``i``; its negatives are the ``N = V (B - 1)`` embeddings of the other
instances, and

    l_ab = -log( exp(s_ab) / sum_{c != a} exp(s_ac) ).

References
----------
* SimCLR / NT-Xent: T. Chen, S. Kornblith, M. Norouzi, G. Hinton, "A Simple Framework for
  Contrastive Learning of Visual Representations", ICML 2020.
* A-InfoNCE: Q. Yu, J. Lou, X. Zhan, Q. Li, W. Zuo, Y. Liu, J. Liu, "Adversarial Contrastive
  Learning via Asymmetric InfoNCE", ECCV 2022.
* HCL: J. Robinson, C.-Y. Chuang, S. Sra, S. Jegelka, "Contrastive Learning with Hard Negative
  Samples", ICLR 2021.

Released forms
--------------
A method's default computes what its released code computes, in value and in gradient. Where
that code differs from the clean formulas, the released form is an option or a function here:

* ``info_nce(..., detach_contrast=True)`` and ``a_info_nce(..., detach_contrast=True)``: the
  similarity ``<z_a, stopgrad(z_b)> / T`` of Kim-Minseon/RoCL ``src/loss.py``
  (``pairwise_similarity``) and yqy2001/A-InfoNCE ``Asym-RoCL/loss.py``
  (``pairwise_similarity_train``).
* ``a_info_nce(..., hn_form="a-infonce")``: the hard-negative weights of A-InfoNCE's release
  (``Asym-RoCL/loss.py``, ``NT_xent_HN``).
* :func:`a_info_nce_advcl`: A-InfoNCE's AdvCL losses (``Asym-AdvCL/losses.py``, ``SupConLoss`` and
  ``ori_SupConLoss``), their block placement and weights included.

The releases add small guards (``+ 1e-8`` in norms, sums and logs, ``+ 1e-9`` before the
hard-negative power); the functions here leave them out (at most ~1e-6 in value, ~1e-7 in gradient).

Implementation notes
--------------------
The ``V B`` embeddings are flattened to ``[V B, D]`` (row ``a = v * B + i``) and one ``[VB, VB]``
similarity matrix is built. The softmax part always runs in float32 (float64 inputs stay float64)
with autocast disabled, so the losses are safe under bf16/fp16 autocast; the result is a 0-d
tensor of that dtype.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from benchmark.errors import check_choice

__all__ = ["info_nce", "a_info_nce", "a_info_nce_advcl", "HN_FORMS"]

HN_FORMS = ("hcl", "a-infonce")  # hard-negative forms of a_info_nce (see its docstring)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_z(z: Tensor) -> tuple[int, int, int]:
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor of shape [V, B, D], got {type(z).__name__}")
    if z.dim() != 3:
        raise ValueError(
            f"z must be 3-D [V, B, D] (views, instances, dim), got shape {tuple(z.shape)}"
        )
    v, b, d = z.shape
    if v < 2:
        raise ValueError(f"z must hold at least 2 views (V >= 2), got V={v}")
    if b < 2:
        raise ValueError(
            f"z must hold at least 2 instances (B >= 2) so that negatives exist, got B={b}"
        )
    if d < 1:
        raise ValueError(f"z must have a non-empty embedding dimension, got D={d}")
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")
    return v, b, d


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a positive real number, got {temperature!r}")
    t = float(temperature)
    if not (t > 0.0 and math.isfinite(t)):
        raise ValueError(f"temperature must be > 0 and finite, got {temperature!r}")
    return t


def _check_adv(adv: int | Sequence[int], v: int) -> tuple[int, ...]:
    if isinstance(adv, numbers.Integral) and not isinstance(adv, bool):
        adv = (int(adv),)
    if isinstance(adv, (str, bytes)) or not isinstance(adv, Sequence):
        raise ValueError(f"adv must be a sequence of view indices, got {adv!r}")
    out: list[int] = []
    for idx in adv:
        if isinstance(idx, bool) or not isinstance(idx, numbers.Integral):
            raise ValueError(f"adv must contain integer view indices, got {idx!r} in {adv!r}")
        if not 0 <= int(idx) < v:
            raise ValueError(f"adv index {idx} out of range for V={v} views (valid: 0..{v - 1})")
        if int(idx) in out:
            raise ValueError(f"adv index {idx} listed more than once in {adv!r}")
        out.append(int(idx))
    return tuple(out)


def _check_hn(hn: tuple[float, float] | None) -> tuple[float, float] | None:
    if hn is None:
        return None
    try:
        beta, tau_plus = hn  # type: ignore[misc]
        beta, tau_plus = float(beta), float(tau_plus)
    except (TypeError, ValueError):
        raise ValueError(
            f"hn must be None or a pair (beta, tau_plus) of numbers, got {hn!r}"
        ) from None
    if not math.isfinite(beta):
        raise ValueError(f"hn beta must be finite, got {beta!r}")
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"hn tau_plus must be in [0, 1), got {tau_plus!r}")
    return beta, tau_plus


def _check_ip(ip: float | Tensor | None) -> float | Tensor | None:
    if ip is None:
        return None
    if isinstance(ip, Tensor):  # checked by shape only: reading its value would sync the device
        if ip.dim() != 0 or not ip.is_floating_point():
            raise ValueError(
                f"ip as a tensor must be a 0-d float tensor, got shape {tuple(ip.shape)}, {ip.dtype}"
            )
        return ip
    try:
        lam = float(ip)
    except (TypeError, ValueError):
        raise ValueError(f"ip must be None or a number lam in [0, 1], got {ip!r}") from None
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"ip (lam) must be in [0, 1], got {ip!r}")
    return lam


def _check_adv_weight(adv_weight: float) -> float:
    try:
        w = float(adv_weight)
    except (TypeError, ValueError):
        raise ValueError(f"adv_weight must be a non-negative number, got {adv_weight!r}") from None
    if not (w >= 0.0 and math.isfinite(w)):
        raise ValueError(f"adv_weight must be finite and >= 0, got {adv_weight!r}")
    return w


# --------------------------------------------------------------------------------------------
# core
# --------------------------------------------------------------------------------------------


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _flatten(z: Tensor) -> Tensor:
    """[V, B, D] -> [V B, D], upcasting half precision to float32 (float64 stays float64)."""
    if z.dtype != torch.float64:
        z = z.float()
    return z.reshape(-1, z.shape[-1])


def _masks(v: int, b: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Index helpers for the flattened rows a = view * B + instance.

    Returns (view_of_row, self_mask, pos_mask, neg_mask), masks of shape [VB, VB] (bool).
    """
    n = v * b
    idx = torch.arange(n, device=device)
    inst = idx % b
    view = idx // b
    same_inst = inst[:, None] == inst[None, :]
    self_mask = idx[:, None] == idx[None, :]
    pos_mask = same_inst & ~self_mask
    neg_mask = ~same_inst
    return view, self_mask, pos_mask, neg_mask


def _positive_sum(m: Tensor, v: int, b: int) -> Tensor:
    """sum_a sum_{b in P(a)} m[a, b], read with a gather of the positives' columns.

    Row ``a = u * B + i`` has the positives ``u' * B + i`` (u' != u), in ascending order, which is
    the order boolean indexing with the positive mask would give, without its host sync.
    """
    rows = torch.arange(v * b, device=m.device)
    view, inst = rows // b, rows % b
    k = torch.arange(v - 1, device=m.device)
    cols = (k[None, :] + (k[None, :] >= view[:, None]).long()) * b + inst[:, None]  # [VB, V-1]
    return m.gather(1, cols).sum()


def _log_denominators(
    s: Tensor,
    self_mask: Tensor,
    pos_mask: Tensor,
    neg_mask: Tensor,
    n_pos: int,
    n_neg: int,
    temperature: float,
    hn: tuple[float, float] | None,
    hn_form: str = "hcl",
) -> Tensor:
    """Per-anchor log of the denominator of l_ab (a vector of length VB).

    Plain: log sum_{c != a} exp(s_ac).
    HN:    log(pos_a + Ng_a) with HCL's reweighted, debiased negative term (computed with a
           per-row shift so that no exponent is positive). ``hn_form`` says how the weight of
           negative k is normalised: "hcl" by the mean of exp(beta s_ak') over the anchor's N
           negatives k'; "a-infonce" (A-InfoNCE's release) by the mean of exp(beta s_kk') over
           all VB entries of row k, the negative's own row.
    """
    neg_inf = float("-inf")
    if hn is None:
        return s.masked_fill(self_mask, neg_inf).logsumexp(dim=1)

    beta, tau_plus = hn
    # log pos_a = log( 1/|P(a)| sum_p exp(s_ap) )
    log_pos = s.masked_fill(~pos_mask, neg_inf).logsumexp(dim=1) - math.log(n_pos)
    log_imp_sum = (s * beta).masked_fill(~neg_mask, neg_inf).logsumexp(dim=1)  # per row
    if hn_form == "hcl":
        # sum_k w_ak exp(s_ak) = N * sum_k exp((beta+1) s_ak) / sum_k exp(beta s_ak)
        log_rew = (
            math.log(n_neg)
            + (s * (beta + 1.0)).masked_fill(~neg_mask, neg_inf).logsumexp(dim=1)
            - log_imp_sum
        )
    else:
        # sum_k exp((beta+1) s_ak) / mbar_k, mbar_k = 1/(VB) sum_{k' neg of k} exp(beta s_kk')
        log_mbar = log_imp_sum - math.log(s.shape[1])
        log_rew = (s * (beta + 1.0) - log_mbar[None, :]).masked_fill(~neg_mask, neg_inf)
        log_rew = log_rew.logsumexp(dim=1)
    log_floor = math.log(n_neg) - 1.0 / temperature  # log( N exp(-1/T) )
    shift = torch.maximum(log_pos, log_rew).detach().clamp(min=log_floor)
    pos = torch.exp(log_pos - shift)
    rew = torch.exp(log_rew - shift)
    floor = torch.exp(log_floor - shift)
    ng = torch.maximum((rew - tau_plus * n_neg * pos) / (1.0 - tau_plus), floor)
    return shift + torch.log(pos + ng)


def _loss_matrix(
    zf: Tensor,
    keys: Tensor,
    masks: tuple[Tensor, Tensor, Tensor, Tensor],
    n_pos: int,
    n_neg: int,
    temperature: float,
    hn: tuple[float, float] | None,
    hn_form: str = "hcl",
) -> Tensor:
    """L[a, b] = l_ab (plain or HN form) for all pairs; only positive pairs are used later."""
    _, self_mask, pos_mask, neg_mask = masks
    s = (zf @ keys.T) / temperature
    log_den = _log_denominators(
        s, self_mask, pos_mask, neg_mask, n_pos, n_neg, temperature, hn, hn_form
    )
    return log_den[:, None] - s


def _advcl_matrix(
    zf: Tensor,
    keys: Tensor,
    masks: tuple[Tensor, Tensor, Tensor, Tensor],
    n_pos: int,
    n_neg: int,
    temperature: float,
    hn: tuple[float, float] | None,
) -> Tensor:
    """E[a, b] of A-InfoNCE's AdvCL losses (``Asym-AdvCL/losses.py``) for all pairs.

    Plain (``ori_SupConLoss``): E = l_ab, a row-wise log-softmax (its row-max shift cancels).
    HN (``SupConLoss``): with t_ab = s_ab - stopgrad(max_c s_ac) (the self-similarity included)
    and D_b = pos_b + Ng_b computed from row b of t ("a-infonce" weights, floor N exp(-1/T) in
    the shifted units), E[a, b] = log D_b - t_ab: the denominator is the column's, as the
    release's broadcast of a per-row vector over the last dimension gives.
    """
    if hn is None:
        return _loss_matrix(zf, keys, masks, n_pos, n_neg, temperature, None)
    _, self_mask, pos_mask, neg_mask = masks
    s = (zf @ keys.T) / temperature
    t = s - s.amax(dim=1, keepdim=True).detach()
    log_den = _log_denominators(
        t, self_mask, pos_mask, neg_mask, n_pos, n_neg, temperature, hn, "a-infonce"
    )
    return log_den[None, :] - t


def info_nce(z: Tensor, temperature: float = 0.5, *, detach_contrast: bool = False) -> Tensor:
    """Multi-view InfoNCE (NT-Xent for two views), docs/methods.md.

    ``info_nce = 1/(V B) * sum_a 1/(V-1) * sum_{b in P(a)} l_ab`` with
    ``l_ab = -log(exp(s_ab) / sum_{c != a} exp(s_ac))`` and ``s_ab = <z_a, z_b> / T``.

    For ``V = 2`` this is SimCLR's NT-Xent loss (Chen et al., ICML 2020; ACL's ``nt_xent``). For
    ``V = 4`` it equals AdvCL's unsupervised SupCon loss divided by AdvCL's factor ``T / 0.07``.

    Args:
        z: ``[V, B, D]`` embeddings, ``V >= 2`` views of ``B >= 2`` instances; rows are assumed to
            be L2-normalised already (the caller normalises; nothing is renormalised here).
        temperature: ``T > 0``.
        detach_contrast: compute every ``s_ab`` as ``<z_a, stopgrad(z_b)> / T`` so that each
            term's gradient moves only its anchor (RoCL's released code does this). The value
            is unchanged.

    Returns:
        A 0-d tensor (float32, or float64 for float64 input), differentiable w.r.t. ``z``.

    Raises:
        ValueError: on a wrong shape, ``V < 2``, ``B < 2``, non-float ``z`` or ``T <= 0``.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> z = F.normalize(torch.randn(2, 8, 16), dim=-1)  # two views of 8 instances
        >>> loss = info_nce(z, temperature=0.5)
        >>> loss.shape
        torch.Size([])
    """
    v, b, _ = _check_z(z)
    t = _check_temperature(temperature)
    with _no_autocast(z.device.type):
        zf = _flatten(z)
        masks = _masks(v, b, zf.device)
        keys = zf.detach() if detach_contrast else zf
        big_l = _loss_matrix(zf, keys, masks, v - 1, v * (b - 1), t, None)
        return _positive_sum(big_l, v, b) / (v * b * (v - 1))


def a_info_nce(
    z: Tensor,
    adv: int | Sequence[int] = (0,),
    temperature: float = 0.5,
    ip: float | Tensor | None = None,
    adv_weight: float = 1.0,
    hn: tuple[float, float] | None = None,
    *,
    detach_contrast: bool = False,
    hn_form: str = "hcl",
) -> Tensor:
    """Asymmetric InfoNCE (A-InfoNCE, Yu et al., ECCV 2022), docs/methods.md.

    ``a_info_nce = 1/(V B) * sum_a 1/(V-1) * sum_{b in P(a)} M_ab`` where ``M`` is built in three
    steps from ``l_ab``:

    1. Hard negatives, ``hn=(beta, tau_plus)`` (HCL, Robinson et al., ICLR 2021)::

           pos_a = 1/|P(a)| sum_{p in P(a)} exp(s_ap)
           w_ak  = exp(beta s_ak) / (1/N sum_{k'} exp(beta s_ak'))          (k, k' negatives of a)
           Ng_a  = max((-tau_plus N pos_a + sum_k w_ak exp(s_ak)) / (1 - tau_plus), N exp(-1/T))
           l_ab  = -log(exp(s_ab) / (pos_a + Ng_a))

       With ``V = 2`` this is exactly HCL's loss (``hn_form="hcl"``). ``hn_form="a-infonce"``
       is A-InfoNCE's released form (yqy2001/A-InfoNCE, ``Asym-RoCL/loss.py``, ``NT_xent_HN``):
       the weight of negative k is normalised by its own row, over all ``VB`` entries,
       ``w_ak = exp(beta s_ak) / (1/(VB) sum_{k' neg of k} exp(beta s_kk'))``.
    2. ``adv_weight`` (w) multiplies every term between an adversarial and a clean view of the
       same instance; clean-clean and adversarial-adversarial pairs keep weight 1.
    3. Inferior positives, ``ip=lam`` in [0, 1]: for every instance i, clean view c and
       adversarial view v, both ``M[(c,i),(v,i)]`` and ``M[(v,i),(c,i)]`` become
       ``w * (lam * l^sg_{(c,i),(v,i)} + (1 - lam) * l^sg_{(v,i),(c,i)})``, where ``l^sg_ab`` is
       ``l_ab`` (or its HN form) computed with every non-anchor embedding of row a detached, so
       its gradient only moves the anchor ``z_a``. ``lam = 0``: the clean-adversarial terms send
       no gradient to clean views; ``lam = 1``: none to adversarial views.

    With ``ip=None, adv_weight=1, hn=None`` this equals :func:`info_nce` (value and gradient).

    ``detach_contrast=True`` computes every ``s_ab`` as ``<z_a, stopgrad(z_b)> / T``, as A-InfoNCE's
    RoCL release does (``Asym-RoCL/loss.py``, ``pairwise_similarity_train``, after RoCL's
    ``pairwise_similarity``): the value is unchanged and each term's gradient reaches its anchor
    (and, in the "a-infonce" HN form, the rows whose means normalise its negatives' weights).
    With it, the released RoCL variants are ``(V - 1) * a_info_nce(z, adv=(2,), ip=lam,
    adv_weight=w / 2, hn=hn, detach_contrast=True, hn_form="a-infonce")`` for the release's
    ``--stpg_degree lam --adv_weight w`` (``adv_weight=1`` without ``--stop_grad``).

    Args:
        z: ``[V, B, D]`` L2-normalised embeddings (see :func:`info_nce`).
        adv: index (or indices) along dim 0 of the adversarial views; the others are clean. May be
            empty. Indices must be distinct and in ``0..V-1``.
        temperature: ``T > 0``.
        ip: ``None`` (ordinary positives) or ``lam`` in ``[0, 1]``: a number, or a 0-d tensor on the
            device (its range is then the caller's to check: reading it would sync).
        adv_weight: weight ``w >= 0`` of the clean-adversarial positive terms.
        hn: ``None`` or ``(beta, tau_plus)`` with ``tau_plus`` in ``[0, 1)``.
        detach_contrast: detach the contrast side of every similarity (see above).
        hn_form: ``"hcl"`` (default) or ``"a-infonce"``; used only with ``hn``.

    Returns:
        A 0-d tensor (float32, or float64 for float64 input), differentiable w.r.t. ``z``.

    Raises:
        ValueError: on invalid shapes or arguments (see above); an unknown ``hn_form`` raises
            :class:`benchmark.errors.UnknownName`.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> z = F.normalize(torch.randn(4, 8, 16), dim=-1)  # [adv, t1, t2, hfc] as in AdvCL
        >>> loss = a_info_nce(z, adv=(0,), ip=0.2, adv_weight=1.2, hn=(1.0, 0.1))
        >>> bool(torch.isfinite(loss))
        True
        >>> torch.allclose(a_info_nce(z), info_nce(z))
        True
    """
    v, b, _ = _check_z(z)
    t = _check_temperature(temperature)
    adv_idx = _check_adv(adv, v)
    lam = _check_ip(ip)
    w = _check_adv_weight(adv_weight)
    hn_ = _check_hn(hn)
    form = check_choice("hn_form", hn_form, HN_FORMS)
    n_pos, n_neg = v - 1, v * (b - 1)

    with _no_autocast(z.device.type):
        zf = _flatten(z)
        masks = _masks(v, b, zf.device)
        view, _, pos_mask, _ = masks
        row_adv = torch.zeros_like(view, dtype=torch.bool)  # [VB]; built on the device, no copy
        for u in adv_idx:
            row_adv |= view == u
        cross = pos_mask & (row_adv[:, None] != row_adv[None, :])  # clean-adv, same instance

        keys = zf.detach() if detach_contrast else zf
        big_l = _loss_matrix(zf, keys, masks, n_pos, n_neg, t, hn_, form)
        if lam is None:
            m = torch.where(cross, w * big_l, big_l)
        else:
            # l^sg: row a sees detached copies of every other embedding (z_a . sg(z_b)).
            l_sg = (
                big_l
                if detach_contrast
                else _loss_matrix(zf, zf.detach(), masks, n_pos, n_neg, t, hn_, form)
            )
            # alpha_ab = lam if the anchor a is clean, 1 - lam if it is adversarial, so that on a
            # cross pair M_ab = w * (alpha_ab l^sg_ab + alpha_ba l^sg_ba), which is the spec's
            # w * (lam l^sg_{c,v} + (1 - lam) l^sg_{v,c}) for both orientations.
            if isinstance(lam, Tensor):  # a 0-d tensor on the device (adaptive lam): no host sync
                alpha = torch.where(row_adv[:, None], 1.0 - lam, lam).to(zf.dtype)
            else:
                alpha = torch.full((v * b, 1), lam, dtype=zf.dtype, device=zf.device)
                alpha = alpha.masked_fill(row_adv[:, None], 1.0 - lam)
            a_sg = alpha * l_sg
            m = torch.where(cross, w * (a_sg + a_sg.T), big_l)
        return _positive_sum(m, v, b) / (v * b * (v - 1))


def a_info_nce_advcl(
    z: Tensor,
    adv: int = 0,
    temperature: float = 0.5,
    ip: float | Tensor | None = None,
    adv_weight: float = 1.0,
    hn: tuple[float, float] | None = None,
) -> Tensor:
    """A-InfoNCE's released AdvCL losses (yqy2001/A-InfoNCE, ``Asym-AdvCL/losses.py``), divided
    by AdvCL's factor ``T / 0.07`` (multiply by it as for :func:`info_nce`).

    ``hn=None`` is ``ori_SupConLoss``, ``hn=(beta, tau_plus)`` is ``SupConLoss``; ``ip=None`` is
    their ``stop_grad=False``, ``ip=lam`` is ``stop_grad=True, stop_grad_sd=lam``; ``adv_weight``
    is ``--adv_weight``. Write ``v`` for the adversarial view (one view, ``adv``) and ``c`` for
    the clean ones. The loss is ``1/(V B) sum_a 1/(V-1) sum_{b in P(a)} M_ab`` where ``M`` starts
    from a matrix ``E`` (plain: ``E_ab = l_ab``; HN: ``E_ab = log D_b - t_ab``, the release's
    shifted logits with the column's hard-negative denominator, "a-infonce" weights), and the
    release then overwrites the clean-adversarial positions with one block ``A`` and its
    transpose::

        ip=None:  A_(v,i),(c,i) = E_(v,i),(c,i)
                  M_(v,i),(c,i) = w A,   M_(c,i),(v,i) = w^2 A     (its in-place writes alias)
        ip=lam:   A_(v,i),(c,i) = lam E^sg_(c,i),(v,i) + (1 - lam) E^sg_(v,i),(c,i)
                  M_(v,i),(c,i) = M_(c,i),(v,i) = w A

    where ``E^sg`` is ``E`` computed from ``<z_a, stopgrad(z_b)>``. Other positive pairs keep
    ``E``. In the HN form ``E_(v,i),(c,i)`` is the clean-anchored term, so both positions hold
    clean-anchored terms; in the plain form with ``ip=None`` both hold the adversarial-anchored
    one. With ``ip=lam`` and ``hn=None`` this equals ``a_info_nce(z, adv=(adv,), ip=lam,
    adv_weight=w)``. The releases' attack objective for every A-InfoNCE AdvCL variant is the
    plain form with ``ip=None`` and the variant's ``adv_weight``.

    Args:
        z: ``[V, B, D]`` L2-normalised embeddings; the release has V = 4, [x_cl, t1, t2, HFC].
        adv: the index of the one adversarial view.
        temperature: ``T > 0`` (the HN floor uses it; the release hard-codes 0.5 there).
        ip: ``None`` or ``lam`` in ``[0, 1]`` (a number or a 0-d device tensor).
        adv_weight: ``w >= 0``.
        hn: ``None`` or ``(beta, tau_plus)`` with ``tau_plus`` in ``[0, 1)``.

    Returns:
        A 0-d tensor (float32, or float64 for float64 input), differentiable w.r.t. ``z``.

    Raises:
        ValueError: on invalid shapes or arguments.

    Example:
        >>> import torch, torch.nn.functional as F
        >>> z = F.normalize(torch.randn(4, 8, 16, dtype=torch.float64), dim=-1)
        >>> loss = a_info_nce_advcl(z, ip=0.2, adv_weight=1.2)
        >>> torch.allclose(loss, a_info_nce(z, adv=(0,), ip=0.2, adv_weight=1.2))
        True
    """
    v, b, _ = _check_z(z)
    t = _check_temperature(temperature)
    if isinstance(adv, bool) or not isinstance(adv, numbers.Integral):
        raise ValueError(f"adv must be the index of the one adversarial view, got {adv!r}")
    (a,) = _check_adv(adv, v)
    lam = _check_ip(ip)
    w = _check_adv_weight(adv_weight)
    hn_ = _check_hn(hn)
    n_pos, n_neg = v - 1, v * (b - 1)

    with _no_autocast(z.device.type):
        # the adversarial view first, as in the release (the loss is a mean over rows)
        order = [a] + [u for u in range(v) if u != a]
        zf = _flatten(z[order] if a else z)
        masks = _masks(v, b, zf.device)
        e = _advcl_matrix(zf, zf, masks, n_pos, n_neg, t, hn_)
        if lam is None:
            block, w_back = e[:b, b:], w * w
        else:
            e_sg = _advcl_matrix(zf, zf.detach(), masks, n_pos, n_neg, t, hn_)
            block, w_back = lam * e_sg[b:, :b].T + (1.0 - lam) * e_sg[:b, b:], w
        m = torch.cat(
            [torch.cat([e[:b, :b], w * block], 1), torch.cat([w_back * block.T, e[b:, b:]], 1)]
        )
        return _positive_sum(m, v, b) / (v * b * (v - 1))
