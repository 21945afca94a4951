"""Batched image augmentation with per-sample random parameters (METHODS.md section 2).

Every image in a batch gets its own crop box, flip, colour-jitter factors, colour-jitter order and
grayscale draw, with the distributions of torchvision's per-image v1 pipeline
(``RandomResizedCrop``, ``RandomHorizontalFlip``, ``RandomApply(ColorJitter, p)``,
``RandomGrayscale``). Running torchvision (v1 or v2) on a whole batch instead draws one set of
parameters for the batch, which makes contrastive views of different images alike.

Why not kornia.augmentation: kornia 0.9.0's ``ColorJitter`` uses torchvision's formulas but draws one
order of the four colour ops per call (per batch), where torchvision draws one per image, and its
``RandomResizedCrop`` crops image by image in a Python loop. Here the crop is a batched separable
resampling (two small matrix products per image, with torchvision's antialiased bilinear / bicubic
weights, so a crop equals ``torchvision.transforms.functional.resized_crop``), and the colour ops
are torchvision's tensor formulas applied with a per-sample order.

Randomness: all parameters are drawn on the CPU from ``generator`` (default: the global RNG, so
``torch.manual_seed`` makes views reproducible, and the same seed gives the same views on every
device), a fixed number of draws per call whatever the images hold. Everything that depends on
those parameters (resampling matrices, which images each colour op touches) is planned on the host
and reaches the device in a few pinned, non-blocking copies, so a view never makes the host wait
for the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CropFlip", "SimCLRViews", "ViewAdaptation", "colour_jitter", "grayscale", "resized_crop",
           "sample_crop_boxes", "to_float"]

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def to_float(x_uint8: Tensor) -> Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x_uint8.to(torch.float32) / 255.0


def to_device(tensors: list[Tensor], device: torch.device) -> list[Tensor]:
    """Host tensors to ``device``: unchanged when already there, else :func:`packed_copy`."""
    if all(t.device == device for t in tensors):
        return tensors
    return packed_copy(tensors, device)


def packed_copy(tensors: list[Tensor], device: torch.device) -> list[Tensor]:
    """Copy ``tensors`` to ``device`` with one transfer per dtype, returned in their shapes.

    On CUDA the packed buffer is pinned and copied with ``non_blocking=True``: a copy from pinned
    memory does not wait for the device (a plain ``.to(device)`` from pageable memory does).
    """
    out: list[Tensor | None] = [None] * len(tensors)
    groups: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.dtype, []).append(i)
    for idx in groups.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in idx])
        if device.type == "cuda":
            flat = flat.pin_memory()
        flat = flat.to(device, non_blocking=True)
        for i, part in zip(idx, flat.split([tensors[i].numel() for i in idx])):
            out[i] = part.view(tensors[i].shape)
    return out  # type: ignore[return-value]


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    # CPU draws: identical parameters on every device for a given seed
    return torch.rand(shape, generator=generator, dtype=torch.float64)


# ---- crop -----------------------------------------------------------------------------------


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` boxes ``[n, 4]`` = (top, left, h, w), int64, distributed as torchvision's
    ``RandomResizedCrop.get_params``: up to 10 tries of area ~ U(scale) and log-ratio ~ U(log ratio),
    the first that fits is kept, else the central crop of the clamped ratio.
    """
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * _rand((n, 10), generator))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand((n, 10), generator)
    ar = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * ar))  # round half to even, like Python's round()
    h = torch.round(torch.sqrt(target / ar))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # argmax returns the first maximum
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # fallback (no try fitted): central crop, ratio clamped into range
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    ok = fits.any(1)
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    u = _rand((n, 2), generator)
    top = torch.where(ok, torch.floor(u[:, 0] * (height - h + 1)), torch.full_like(h, (height - fh) // 2))
    left = torch.where(ok, torch.floor(u[:, 1] * (width - w + 1)), torch.full_like(w, (width - fw) // 2))
    return torch.stack([top, left, h, w], 1).long()


def _bilinear_kernel(x: Tensor) -> Tensor:
    return (1.0 - x.abs()).clamp_min(0.0)


def _bicubic_kernel(x: Tensor) -> Tensor:
    # a = -0.5: the antialiased bicubic of PIL and torch (torchvision's default antialias=True)
    a = -0.5
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


_KERNELS = {"bilinear": _bilinear_kernel, "bicubic": _bicubic_kernel}


def _resample_matrix(
    start: Tensor, length: Tensor, in_size: int, out_size: int, kernel: str
) -> Tensor:
    """``[n, out_size, in_size]`` weights resizing the pixels [start, start + length) to out_size.

    torch's antialiased interpolation (align_corners=False): output pixel i is centred at
    start + (i + 0.5) * length / out_size; the kernel is stretched by the scale when downsizing;
    weights are restricted to the crop and normalised (which is how edges are clamped).
    """
    fn = _KERNELS[kernel]
    start, length = start.to(torch.float32), length.to(torch.float32)
    scale = length / out_size
    stretch = scale.clamp_min(1.0)  # the kernel widens only when downsizing (antialias)
    centre = start[:, None] + scale[:, None] * (torch.arange(out_size, dtype=torch.float32) + 0.5)
    pix = torch.arange(in_size, dtype=torch.float32) + 0.5
    w = fn((pix[None, None, :] - centre[:, :, None]) / stretch[:, None, None])
    inside = (pix[None, :] >= start[:, None]) & (pix[None, :] < (start + length)[:, None])
    w = w * inside[:, None, :]
    return w / w.sum(-1, keepdim=True)


def resized_crop(
    x: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None, interpolation: str = "bilinear"
) -> Tensor:
    """Crop each image to its box (top, left, h, w), resize to ``size`` x ``size``, optionally flip.

    Equals ``torchvision.transforms.functional.resized_crop(..., antialias=True)`` image by image
    (then ``hflip`` where ``flip``), computed for the whole batch as ``Ry @ x @ Rx^T``. Bicubic
    overshoot is clamped to [0, 1], as PIL does.
    """
    if interpolation not in _KERNELS:
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
    n, _, height, width = x.shape
    boxes = boxes.cpu()
    ry = _resample_matrix(boxes[:, 0], boxes[:, 2], height, size, interpolation)
    rx = _resample_matrix(boxes[:, 1], boxes[:, 3], width, size, interpolation)
    if flip is not None:  # a horizontal flip reverses the output columns
        rx = torch.where(flip.cpu()[:, None, None], rx.flip(1), rx)
    ry, rx = to_device([ry.to(x.dtype), rx.to(x.dtype)], x.device)
    c = x.shape[1]
    out = torch.bmm(x.reshape(n, c * height, width), rx.transpose(1, 2))  # columns: [n, C*H, S]
    out = torch.matmul(ry[:, None], out.view(n, c, height, size))  # rows: [n, C, S, S]
    return out.clamp_(0.0, 1.0) if interpolation == "bicubic" else out


# ---- colour ---------------------------------------------------------------------------------


def grayscale(x: Tensor) -> Tensor:
    """torchvision's ``rgb_to_grayscale`` with one output channel, ``[n, 1, H, W]``."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _per_sample(f: Tensor) -> Tensor:
    return f.view(-1, 1, 1, 1)


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * _per_sample(f)).clamp_(0.0, 1.0)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = grayscale(x).mean((1, 2, 3), keepdim=True)
    f = _per_sample(f)
    return (f * x + (1.0 - f) * mean).clamp_(0.0, 1.0)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    f = _per_sample(f)
    return (f * x + (1.0 - f) * grayscale(x)).clamp_(0.0, 1.0)


def _hue(x: Tensor, f: Tensor) -> Tensor:
    """torchvision's ``adjust_hue`` (RGB -> HSV, hue + f turns, HSV -> RGB), in closed form.

    With chroma c = max - min and the hue in sixths of a turn, HSV -> RGB is
    out_n = max - c * clamp(min(k_n, 4 - k_n), 0, 1) with k_n = (n + hue6) mod 6 for n = 5, 3, 1;
    equal to torchvision's six-sector table up to float rounding, with fewer temporaries.
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    c = maxc - minc
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    hue6 = torch.where(is_r, g - b, torch.where(is_g, b - r + 2 * c, r - g + 4 * c))
    hue6 = hue6 / torch.where(c == 0, torch.ones_like(c), c) + 6.0 * f.view(-1, 1, 1)
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # 5, 3, 1: no copy
    k = torch.remainder(hue6.unsqueeze(1) + n, 6.0)
    k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(1) - c.unsqueeze(1) * k


_COLOUR_OPS = (_brightness, _contrast, _saturation, _hue)
_NEUTRAL = (1.0, 1.0, 1.0, 0.0)


def colour_jitter(
    x: Tensor, factors: Tensor, order: Tensor, active: Tensor | None = None
) -> Tensor:
    """torchvision's ``ColorJitter`` with per-sample factors and per-sample op order.

    Args:
        x: float images ``[n, C, H, W]`` in [0, 1].
        factors: ``[n, 4]`` brightness, contrast, saturation, hue factors (hue in turns, [-0.5, 0.5]).
        order: ``[n, 4]`` a permutation of 0..3 per image (0 brightness, 1 contrast, 2 saturation,
            3 hue); ops are applied in that order.
        active: optional bool ``[n]``; images where it is False are returned unchanged.
    """
    factors, order = factors.cpu(), order.cpu()
    act = torch.ones(len(x), dtype=torch.bool) if active is None else active.cpu()
    # plan on the host: slot k applies, to each image, the op at position k of its order; an op
    # whose factors are all neutral is skipped, as torchvision skips a zero magnitude
    skip = [bool((factors[act, op] == _NEUTRAL[op]).all()) for op in range(4)]
    plan: list[tuple[int, Tensor, Tensor]] = []
    for slot in range(4):
        for op in range(4):
            if skip[op]:
                continue
            idx = torch.nonzero(act & (order[:, slot] == op)).squeeze(1)
            if len(idx):
                plan.append((op, idx, factors[idx, op].to(x.dtype)))
    moved = to_device([t for _, idx, f in plan for t in (idx, f)], x.device)
    out = x.clone()
    for k, (op, _, _) in enumerate(plan):
        idx, f = moved[2 * k], moved[2 * k + 1]
        out[idx] = _COLOUR_OPS[op](out[idx], f)
    return out


# ---- modules --------------------------------------------------------------------------------


class SimCLRViews(nn.Module):
    """One random SimCLR view per image: RandomResizedCrop, h-flip, ColorJitter (p), grayscale (p).

    Args:
        size: output height and width.
        scale, ratio: RandomResizedCrop's area fraction and aspect-ratio ranges.
        jitter: ColorJitter's (brightness, contrast, saturation, hue) magnitudes.
        p_jitter, p_gray: probabilities of colour jitter and of grayscale.
        flip: horizontal flip with probability 0.5.
        colour_first: colour ops (jitter, grayscale) before the crop and flip: RoCL's order.
            The flip is always fused into the crop: flipping before or after a crop at a
            uniformly random position gives the same distribution.
        interpolation: "bilinear" (torchvision's default) or "bicubic" (ACL).
        strength: in [0, 1], DynACL's augmentation strength s (Luo et al., ICLR 2023): jitter
            magnitudes and both probabilities are multiplied by s and the crop scale becomes
            (1 - (1 - scale[0]) s, scale[1]); the flip is unchanged. Assign ``views.strength``
            to change it between epochs.

    Example:
        >>> views = SimCLRViews(32, scale=(0.1, 1.0), interpolation="bicubic")
        >>> t1, t2 = views(x), views(x)  # x: float [B, 3, H, W] in [0, 1]
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        flip: bool = True,
        colour_first: bool = False,
        interpolation: str = "bilinear",
        strength: float = 1.0,
    ) -> None:
        super().__init__()
        if interpolation not in _KERNELS:
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
        if jitter[3] > 0.5 or min(jitter) < 0:
            raise ValueError(f"jitter magnitudes must be >= 0 and hue <= 0.5, got {jitter}")
        self.size = size
        self.scale, self.ratio, self.jitter = tuple(scale), tuple(ratio), tuple(jitter)
        self.p_jitter, self.p_gray, self.flip = p_jitter, p_gray, flip
        self.colour_first, self.interpolation = colour_first, interpolation
        self.strength = strength

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, s: float) -> None:
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {s}")
        self._strength = float(s)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, scale={self.scale}, jitter={self.jitter}, p_jitter={self.p_jitter}, "
            f"p_gray={self.p_gray}, colour_first={self.colour_first}, "
            f"interpolation={self.interpolation}, strength={self.strength}"
        )

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x``: images ``[n, C, H, W]`` (float in [0, 1], or uint8) -> float views ``[n, C, size, size]``.

        ``generator``: an optional CPU ``torch.Generator`` for the parameters (default: global RNG).
        Always computed in float32, also under bf16 autocast: views are attack starting points,
        and bf16 cannot resolve an attack step of 2/255 near 1.
        """
        if not torch.amp.is_autocast_available(x.device.type):  # e.g. the meta device of the sync test
            return self._views(x, generator)
        with torch.autocast(x.device.type, enabled=False):
            return self._views(x, generator)

    def _views(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if x.dtype == torch.uint8:
            x = to_float(x)
        n, _, height, width = x.shape
        s = self._strength
        scale = (min(1.0 - (1.0 - self.scale[0]) * s, self.scale[1]), self.scale[1])
        # a fixed sequence of draws per call, whatever the data: reproducible under a seed
        boxes = sample_crop_boxes(n, height, width, scale, self.ratio, generator)
        flip = _rand((n,), generator) < (0.5 if self.flip else 0.0)
        jitter_on = _rand((n,), generator) < self.p_jitter * s
        u = _rand((n, 4), generator)
        order = _rand((n, 4), generator).argsort(1)  # a uniform random permutation per image
        gray_on = _rand((n,), generator) < self.p_gray * s
        mags = torch.tensor(self.jitter, dtype=torch.float64) * s
        lo = torch.cat([(1 - mags[:3]).clamp_min(0), -mags[3:]])
        hi = torch.cat([1 + mags[:3], mags[3:]])
        factors = lo + (hi - lo) * u
        factors[:, mags == 0] = torch.tensor(_NEUTRAL, dtype=torch.float64)[mags == 0]

        def colour(img: Tensor) -> Tensor:
            img = colour_jitter(img, factors, order, jitter_on)
            if bool(gray_on.any()) and img.shape[1] == 3:
                (on,) = to_device([gray_on.view(-1, 1, 1, 1)], img.device)
                img = torch.where(on, grayscale(img).expand_as(img), img)
            return img

        if self.colour_first:
            x = colour(x)
        x = resized_crop(x, boxes, self.size, flip, self.interpolation)
        if not self.colour_first:
            x = colour(x)
        return x


class CropFlip(nn.Module):
    """RandomCrop(size, padding) with zero padding, then a horizontal flip (p 0.5), per image.

    AdvCL's ``x_org`` view and the finetuning augmentation (PROTOCOL.md).
    """

    def __init__(self, size: int, padding: int = 4, flip: bool = True) -> None:
        super().__init__()
        self.size, self.padding, self.flip = size, padding, flip

    def extra_repr(self) -> str:
        return f"size={self.size}, padding={self.padding}, flip={self.flip}"

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x``: images ``[n, C, H, W]`` (any dtype) -> ``[n, C, size, size]``, same dtype."""
        n, _, height, width = x.shape
        p = self.padding
        span_y, span_x = height + 2 * p - self.size + 1, width + 2 * p - self.size + 1
        if span_y < 1 or span_x < 1:
            raise ValueError(
                f"crop {self.size} larger than the padded {height + 2 * p}x{width + 2 * p} images"
            )
        u = _rand((n, 3), generator)
        top = torch.floor(u[:, 0] * span_y).long()
        left = torch.floor(u[:, 1] * span_x).long()
        flip = u[:, 2] < (0.5 if self.flip else 0.0)
        ar = torch.arange(self.size)
        rows = top[:, None] + ar
        cols = left[:, None] + ar
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
        padded = F.pad(x, (p, p, p, p))
        wp = width + 2 * p
        (index,) = to_device([(rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, self.size**2)], x.device)
        out = padded.flatten(2).gather(2, index.expand(-1, x.shape[1], -1))
        return out.view(n, x.shape[1], self.size, self.size)



@dataclass(frozen=True)
class ViewAdaptation:
    """How a preset scales every method's published augmentations to its data (default: as published).

    The published views were designed for 32-96 px natural images: on 8x8 digits a crop down to 8%
    of the area keeps a few pixels and a horizontal flip turns some digits into other shapes. So a
    preset may raise the crop's lower area bound to ``min_crop_scale`` and drop flips (``flip``),
    for every method alike: methods build their views through :meth:`simclr_views` / :meth:`crop_flip`.
    """

    min_crop_scale: float = 0.0
    flip: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_crop_scale <= 1.0:
            raise ValueError(f"min_crop_scale must be in [0, 1], got {self.min_crop_scale}")

    def simclr_views(self, size: int, scale: tuple[float, float] = (0.08, 1.0), **published: Any) -> SimCLRViews:
        """:class:`SimCLRViews` with a method's published arguments, adapted."""
        low = max(scale[0], self.min_crop_scale)
        flip = published.pop("flip", True) and self.flip
        return SimCLRViews(size, scale=(low, max(scale[1], low)), flip=flip, **published)

    def crop_flip(self, size: int, padding: int = 4, flip: bool = True) -> CropFlip:
        """:class:`CropFlip` with a method's published arguments, adapted."""
        return CropFlip(size, padding, flip=flip and self.flip)
