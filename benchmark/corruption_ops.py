"""The 15 CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR'19), re-implemented: the constants
and formulas of the reference's ``make_cifar_c.py``, computed with numpy, scipy and Pillow in place
of OpenCV, scikit-image and ImageMagick. Each is ``f(uint8 HWC image, severity, rng) -> float image
in [0, 255]``; :func:`benchmark.corruptions.corrupt` truncates the result to uint8 as the
reference's ``np.uint8`` does. With the reference's random draws fed in, 13 of them give the
reference's uint8 output value for value, or all but a few values in 10,000 (float rounding before
the truncation; docs/protocol.md lists the measured agreement). Frost cannot be the reference's:
it blends in crops of six photographs of frost that acbench does not ship, so :func:`frost` blends
a generated ice texture with the same weights.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)


# ---- helpers (as the reference uses them) -------------------------------------------------------


def _blur(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``gaussian`` on the spatial axes (``multichannel``)."""
    sig = (sigma, sigma, 0) if x.ndim == 3 else sigma
    return ndimage.gaussian_filter(x, sig, mode=mode, truncate=truncate)


def _clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top : top + ch, top : top + ch], (factor, factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim : trim + h, trim : trim + h]


def _plasma(rng: np.random.Generator, mapsize: int, decay: float) -> np.ndarray:
    """A diamond-square height map in [0, 1] (the reference's ``plasma_fractal``)."""
    m = np.zeros((mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corner = m[0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, -1, axis=0)
        sq += np.roll(sq, -1, axis=1)
        m[half:mapsize:step, half:mapsize:step] = wibbled(sq)
        dr = m[half:mapsize:step, half:mapsize:step]
        ul = m[0:mapsize:step, 0:mapsize:step]
        m[0:mapsize:step, half:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1))
        m[half:mapsize:step, 0:mapsize:step] = wibbled(dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0))
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / m.max()


def _motion_blur(img: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's ``MotionBlurImage``: a one-sided Gaussian of width 2 radius + 1 along
    ``angle`` (degrees), edge pixels repeated; uint8 in, uint8 out through a rounded 16-bit quantum
    then truncated to 8 bits, as the reference's round trip through ImageMagick 6 Q16 and an 8-bit
    PNG gives it."""
    width = 2 * int(np.ceil(radius)) + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma * sigma))
    k /= k.sum()
    px, py = width * np.sin(np.radians(angle)), width * np.cos(np.radians(angle))
    norm = np.hypot(px, py)
    x = img.astype(np.float64)
    pad = width
    padded = np.pad(x, ((pad, pad), (pad, pad)) + ((0, 0),) * (x.ndim - 2), mode="edge")
    h, w = x.shape[:2]
    out = np.zeros_like(x)
    for i in range(width):
        dx = int(np.ceil(i * py / norm - 0.5))
        dy = int(np.ceil(i * px / norm - 0.5))
        out += k[i] * padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    out = np.floor(np.round(out * 257) / 257)  # 16-bit quantum (rounded), then 8 bits (truncated)
    return np.clip(out, 0, 255).astype(np.uint8)


def _gray(x: np.ndarray) -> np.ndarray:
    """OpenCV's RGB2GRAY on float32 images (float32 weights and arithmetic)."""
    x = x.astype(np.float32)
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return x[..., 0] * w[0] + x[..., 1] * w[1] + x[..., 2] * w[2]


# ---- the 15 corruptions: uint8 HWC image -> float image in [0, 255] ------------------------------
# constants: CIFAR-10-C's (make_cifar_c.py), indexed by severity - 1


def gaussian_noise(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.04, 0.06, 0.08, 0.09, 0.10)[s - 1]
    x = img / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = (500, 250, 100, 75, 50)[s - 1]
    return np.clip(rng.poisson(img / 255.0 * c) / c, 0, 1) * 255


def impulse_noise(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on each value (scikit-image's ``random_noise(mode='s&p')``, salt half)."""
    c = (0.01, 0.02, 0.03, 0.05, 0.07)[s - 1]
    x = img / 255.0
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    x = np.where(flipped & salted, 1.0, np.where(flipped & ~salted, 0.0, x))
    return np.clip(x, 0, 1) * 255


def defocus_blur(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))[s - 1]
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float32)
    disk /= disk.sum()
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias * alias))  # 3x3 Gaussian anti-aliasing
    g /= g.sum()
    kernel = ndimage.correlate1d(ndimage.correlate1d(disk, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")
    kernel = kernel.astype(np.float32)  # OpenCV blurs the float32 disk in float32
    x = img / 255.0
    out = np.stack([ndimage.correlate(x[..., d], kernel, mode="mirror") for d in range(3)], axis=-1)
    return np.clip(out, 0, 1) * 255


def glass_blur(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, move pixels locally, blur. The reference's "swap" ``x[h, w], x[h', w'] = x[h', w'],
    x[h, w]`` on numpy views copies x[h', w'] into x[h, w] and leaves x[h', w'] as it was; with
    offsets in [-1, 0] (``randint(-1, 1)``) and the loop from the bottom-right corner, every source is
    still unmodified when it is read, so one pass is a gather."""
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[s - 1]
    x = (_blur(img / 255.0, sigma) * 255).astype(np.uint8)
    h, w = x.shape[:2]
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    for _ in range(iterations):
        shifts = rng.integers(-delta, delta, size=(len(rows), len(cols), 2))  # (dx, dy), in loop order
        src_r = rows[:, None] + shifts[..., 1]
        src_c = cols[None, :] + shifts[..., 0]
        x[rows[:, None], cols[None, :]] = x[src_r, src_c]
    return np.clip(_blur(x / 255.0, sigma), 0, 1) * 255


def motion_blur(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))[s - 1]
    return _motion_blur(img, radius, sigma, rng.uniform(-45, 45)).astype(np.float64)


def zoom_blur(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    top = (1.06, 1.11, 1.16, 1.21, 1.26)[s - 1]
    x = (img / 255.0).astype(np.float32)
    factors = np.arange(1, top, 0.01)
    out = np.zeros_like(x)
    for z in factors:
        out += _clipped_zoom(x, z)
    return np.clip((x + out) / (len(factors) + 1), 0, 1) * 255


def snow(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))[s - 1]
    x = img.astype(np.float32) / 255.0
    layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    layer = _clipped_zoom(layer[..., None], c[2])
    layer[layer < c[3]] = 0
    flakes = (np.clip(layer[..., 0], 0, 1) * 255).astype(np.uint8)
    flakes = _motion_blur(flakes, c[4], c[5], rng.uniform(-135, -45)) / 255.0
    flakes = flakes[..., None]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, _gray(x)[..., None] * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def _ice(rng: np.random.Generator, size: int) -> np.ndarray:
    """A generated frost texture, uint8-range RGB: fractal haze plus bright crystal streaks, bluish."""
    mapsize = 1 << max(size - 1, 1).bit_length()
    haze = _plasma(rng, mapsize, 1.6)[:size, :size]
    seeds = (rng.random((size, size)) > 0.93).astype(np.uint8) * 255
    streaks = np.maximum(_motion_blur(seeds, 3, 2.0, rng.uniform(0, 180)),
                         _motion_blur(seeds, 3, 2.0, rng.uniform(0, 180))) / 255.0
    ice = np.clip(0.6 * haze + 0.8 * streaks, 0, 1)
    return ice[..., None] * np.array([205.0, 225.0, 245.0])


def frost(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """c0 image + c1 frost, the reference's weights; the frost is :func:`_ice`, not a photograph."""
    c = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))[s - 1]
    return np.clip(c[0] * img.astype(np.float64) + c[1] * _ice(rng, img.shape[0]), 0, 255)


def fog(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))[s - 1]
    x = img / 255.0
    top = x.max()
    h = x.shape[0]
    x = x + c[0] * _plasma(rng, max(32, 1 << (h - 1).bit_length()), c[1])[:h, :h][..., None]
    return np.clip(x * top / (top + c[0]), 0, 1) * 255


def _rgb2hsv(x: np.ndarray) -> np.ndarray:
    """scikit-image's ``rgb2hsv`` (same operations, so the same float rounding)."""
    v = x.max(-1)
    delta = np.ptp(x, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sat = np.where(delta == 0, 0.0, delta / v)
        h = np.zeros_like(v)
        for channel, offset, a, b in ((0, 0.0, 1, 2), (1, 2.0, 2, 0), (2, 4.0, 0, 1)):
            idx = x[..., channel] == v
            h[idx] = offset + (x[idx, a] - x[idx, b]) / delta[idx]
        h = np.where(delta == 0, 0.0, (h / 6.0) % 1.0)
    out = np.stack([h, sat, v], axis=-1)
    out[np.isnan(out)] = 0
    return out


def _hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image's ``hsv2rgb``."""
    h, sat, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - sat), v * (1 - f * sat), v * (1 - (1 - f) * sat)
    hi = np.stack([hi, hi, hi], axis=-1).astype(np.uint8) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.choose(hi, np.stack([np.stack(c, axis=-1) for c in choices]))


def brightness(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[s - 1]
    hsv = _rgb2hsv(img / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return np.clip(_hsv2rgb(hsv), 0, 1) * 255


def contrast(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[s - 1]
    x = img / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """A random affine map of three points (OpenCV's ``warpAffine``, reflect-101 border), then a
    smoothed random displacement field, both bilinear."""
    size = img.shape[0]
    alpha, sigma, affine = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                            (0.1, 0.03, 0.03))[s - 1]
    alpha, sigma, affine = size * alpha, size * sigma, size * affine
    x = img.astype(np.float32) / 255.0
    center, half = np.float32(size // 2), size // 3
    src = np.float32([[center + half, center + half], [center + half, center - half], [center - half, center - half]])
    dst = src + rng.uniform(-affine, affine, size=src.shape).astype(np.float32)
    m = np.linalg.solve(np.c_[src, np.ones(3)], dst).T  # dst = m @ (x, y, 1)
    inv = np.linalg.inv(np.r_[m, [[0, 0, 1]]])[:2]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    x = np.stack([ndimage.map_coordinates(x[..., d], [sy, sx], order=1, mode="mirror") for d in range(3)], -1)
    dx = (_blur(rng.uniform(-1, 1, size=(size, size)), sigma, "reflect", 3) * alpha).astype(np.float32)
    dy = (_blur(rng.uniform(-1, 1, size=(size, size)), sigma, "reflect", 3) * alpha).astype(np.float32)
    out = np.stack([ndimage.map_coordinates(x[..., d], [yy + dy, xx + dx], order=1, mode="reflect")
                    for d in range(3)], -1)
    return np.clip(out, 0, 1) * 255


def pixelate(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[s - 1]
    size = img.shape[0]
    small = Image.fromarray(img).resize((int(size * c), int(size * c)), Image.BOX)
    return np.asarray(small.resize((size, size), Image.BOX), dtype=np.float64)


def jpeg_compression(img: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    quality = (80, 65, 58, 50, 40)[s - 1]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64)


FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}
