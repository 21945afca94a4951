"""Tests of benchmark.augment against torchvision's per-image v1 pipeline.

Exactness: for given parameters, the batched crop and colour ops equal torchvision's functional ops
image by image. Statistics: over 4,096 views (16 passes over 256 synthetic 32x32 images), the
batched SimCLR views match torchvision's RandomResizedCrop / RandomHorizontalFlip /
RandomApply(ColorJitter, 0.8) / RandomGrayscale(0.2) applied image by image:

  per-channel output mean and std      |difference| < 0.01
  realised crop area fraction          |mean difference| < 0.02, 10/50/90% quantiles within 0.04
  grayscale rate (R == G == B)         |difference| < 0.03, each within 0.03 of 0.2
  flip rate (crop-only run)            |difference| < 0.04
"""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

import benchmark.augment as aug
from benchmark.augment import (
    CropFlip,
    SimCLRViews,
    colour_jitter,
    resized_crop,
    sample_crop_boxes,
    to_float,
)
from benchmark.data import make_synthetic

N_PASSES = 16  # 16 x 256 = 4,096 views per side
SIZE = 32


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """256 colourful synthetic images at 32x32, float in [0, 1]."""
    ds = make_synthetic(n_train=256, n_val=0, n_test=10, image_size=SIZE, seed=3)
    return to_float(ds.train_x)


def _coordinate_image(size: int) -> torch.Tensor:
    """Channel 0 encodes the column, channel 1 the row (pixel centres in [0, 1]), channel 2 a constant."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx, yy, torch.full_like(xx, 0.5)])


def _crop_stats(out: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Realised crop area fraction and flip flag of views of the coordinate image.

    Bilinear upsampling keeps the linear ramps, so max - min of a channel spans the crop's pixel
    centres: (range * size + 1) pixels on each side, exactly the box's width and height.
    """
    x, y = out[:, 0], out[:, 1]
    w = (x.amax((1, 2)) - x.amin((1, 2))) * size + 1
    h = (y.amax((1, 2)) - y.amin((1, 2))) * size + 1
    flipped = x[:, :, 0].mean(1) > x[:, :, -1].mean(1)  # columns decrease left to right
    return (w * h / size**2), flipped


def _gray_rate(out: torch.Tensor) -> float:
    d = (out[:, 0] - out[:, 1]).abs().amax((1, 2)) + (out[:, 1] - out[:, 2]).abs().amax((1, 2))
    return float((d < 1e-6).float().mean())


def _torchvision_pipeline(crop_only: bool = False) -> T.Compose:
    ops = [T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip()]
    if not crop_only:
        ops += [T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2)]
    return T.Compose(ops)


@pytest.fixture(scope="module")
def full_views(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    views = SimCLRViews(SIZE)
    ours = torch.cat([views(images) for _ in range(N_PASSES)])
    tf = _torchvision_pipeline()
    theirs = torch.stack([tf(img) for _ in range(N_PASSES) for img in images])
    return ours, theirs


# ---- exactness against torchvision's functional ops ----------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [16, 32, 48])
def test_resized_crop_equals_torchvision(interpolation: str, size: int) -> None:
    torch.manual_seed(1)
    x = torch.rand(32, 3, 32, 32)
    boxes = sample_crop_boxes(32, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3))
    flip = torch.rand(32) < 0.5
    out = resized_crop(x, boxes, size, flip, interpolation)
    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.BICUBIC
    for k in range(32):
        t, left, h, w = boxes[k].tolist()
        ref = TF.resized_crop(x[k], t, left, h, w, [size, size], mode, antialias=True)
        ref = TF.hflip(ref) if flip[k] else ref
        torch.testing.assert_close(out[k], ref.clamp(0, 1), atol=1e-5, rtol=0)


def test_colour_jitter_equals_torchvision_with_per_sample_order() -> None:
    torch.manual_seed(2)
    x = torch.rand(48, 3, 8, 8)
    lo = torch.tensor([0.6, 0.6, 0.6, -0.1])
    factors = lo + (torch.tensor([1.4, 1.4, 1.4, 0.1]) - lo) * torch.rand(48, 4)
    order = torch.rand(48, 4).argsort(1)
    assert len({tuple(o) for o in order.tolist()}) > 10  # many different orders in one batch
    out = colour_jitter(x, factors, order)
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for k in range(48):
        ref = x[k]
        for op in order[k].tolist():
            ref = fns[op](ref, float(factors[k, op]))
        torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0)


def test_grayscale_equals_torchvision() -> None:
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(aug.grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)


# ---- statistics against torchvision's per-image pipeline ------------------------------------


def test_output_mean_std_match_torchvision(full_views: tuple[torch.Tensor, torch.Tensor]) -> None:
    ours, theirs = full_views
    assert ours.shape == theirs.shape == (N_PASSES * 256, 3, SIZE, SIZE)
    assert float(ours.min()) >= 0 and float(ours.max()) <= 1
    d_mean = (ours.mean((0, 2, 3)) - theirs.mean((0, 2, 3))).abs()
    d_std = (ours.std((0, 2, 3)) - theirs.std((0, 2, 3))).abs()
    assert float(d_mean.max()) < 0.01, d_mean
    assert float(d_std.max()) < 0.01, d_std


def test_grayscale_rate_matches_torchvision(full_views: tuple[torch.Tensor, torch.Tensor]) -> None:
    ours, theirs = full_views
    r_ours, r_theirs = _gray_rate(ours), _gray_rate(theirs)
    assert abs(r_ours - r_theirs) < 0.03, (r_ours, r_theirs)
    assert abs(r_ours - 0.2) < 0.03 and abs(r_theirs - 0.2) < 0.03


def test_crop_area_distribution_matches_torchvision() -> None:
    img = _coordinate_image(SIZE)
    batch = img.expand(256, -1, -1, -1)
    torch.manual_seed(4)
    views = SimCLRViews(SIZE, p_jitter=0.0, p_gray=0.0)
    ours = torch.cat([views(batch) for _ in range(N_PASSES)])
    tf = _torchvision_pipeline(crop_only=True)
    theirs = torch.stack([tf(img) for _ in range(N_PASSES * 256)])
    a_ours, f_ours = _crop_stats(ours, SIZE)
    a_theirs, f_theirs = _crop_stats(theirs, SIZE)
    assert float(a_ours.min()) >= 0.08 - 0.02 and float(a_ours.max()) <= 1.0 + 1e-6
    assert abs(float(a_ours.mean() - a_theirs.mean())) < 0.02
    q = torch.tensor([0.1, 0.5, 0.9])
    assert float((a_ours.quantile(q) - a_theirs.quantile(q)).abs().max()) < 0.04
    assert abs(float(f_ours.float().mean() - f_theirs.float().mean())) < 0.04


# ---- per-sample independence, reproducibility, options --------------------------------------


def test_identical_images_get_different_views(images: torch.Tensor) -> None:
    batch = images[:1].expand(64, -1, -1, -1)
    out = SimCLRViews(SIZE)(batch)
    flat = out.flatten(1)
    distinct = torch.cdist(flat, flat) + torch.eye(64) > 1e-4
    assert bool(distinct.all())
    # the colour part alone (no crop, no flip) also differs per image
    jitter_only = SimCLRViews(
        SIZE, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, p_jitter=1.0, p_gray=0.0
    )
    out = jitter_only(batch).flatten(1)
    assert bool((torch.cdist(out, out) + torch.eye(64) > 1e-4).all())


def test_jitter_order_drawn_per_image(
    monkeypatch: pytest.MonkeyPatch, images: torch.Tensor
) -> None:
    seen = []

    def spy(
        x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        seen.append(order)
        return colour_jitter(x, factors, order, active)

    monkeypatch.setattr(aug, "colour_jitter", spy)
    SimCLRViews(SIZE)(images)
    assert len({tuple(o) for o in seen[0].tolist()}) == 24  # all permutations within one batch


def test_reproducible_under_manual_seed_and_generator(images: torch.Tensor) -> None:
    views = SimCLRViews(SIZE, colour_first=True, interpolation="bicubic")
    torch.manual_seed(5)
    a = views(images[:32])
    torch.manual_seed(5)
    b = views(images[:32])
    assert torch.equal(a, b)
    c = views(images[:32], generator=torch.Generator().manual_seed(9))
    d = views(images[:32], generator=torch.Generator().manual_seed(9))
    assert torch.equal(c, d) and not torch.equal(a, c)
    crop = CropFlip(SIZE)
    torch.manual_seed(5)
    e = crop(images[:32])
    torch.manual_seed(5)
    assert torch.equal(e, crop(images[:32]))


def test_uint8_input_and_output_range(images: torch.Tensor) -> None:
    x8 = (images[:16] * 255).round().to(torch.uint8)
    torch.manual_seed(6)
    a = SimCLRViews(16, interpolation="bicubic")(x8)
    torch.manual_seed(6)
    b = SimCLRViews(16, interpolation="bicubic")(to_float(x8))
    assert a.dtype == torch.float32 and a.shape == (16, 3, 16, 16)
    assert torch.equal(a, b) and float(a.min()) >= 0 and float(a.max()) <= 1


def test_strength_zero_is_identity_or_flip(images: torch.Tensor) -> None:
    views = SimCLRViews(SIZE, scale=(0.1, 1.0), strength=0.0)  # DynACL at the end of training
    x = images[:64]
    out = views(x)
    same = (out - x).abs().amax((1, 2, 3)) < 1e-5
    flipped = (out - x.flip(-1)).abs().amax((1, 2, 3)) < 1e-5
    assert bool((same | flipped).all()) and bool(same.any()) and bool(flipped.any())
    views.strength = 0.5
    assert views.strength == 0.5
    with pytest.raises(ValueError):
        views.strength = 1.5


def test_colour_first_changes_order_not_shapes(images: torch.Tensor) -> None:
    x = images[:8]
    torch.manual_seed(7)
    a = SimCLRViews(16, colour_first=True)(x)
    torch.manual_seed(7)
    b = SimCLRViews(16, colour_first=False)(x)
    assert a.shape == b.shape == (8, 3, 16, 16)
    assert not torch.allclose(a, b)  # contrast and the crop do not commute


# ---- CropFlip -------------------------------------------------------------------------------


def test_cropflip_is_a_shifted_or_flipped_copy() -> None:
    torch.manual_seed(8)
    n, size, pad = 64, 16, 4
    x = torch.rand(n, 3, size, size) + 0.1  # nonzero, so padding zeros are recognisable
    out = CropFlip(size, padding=pad)(x)
    assert out.shape == (n, 3, size, size) and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    span = 2 * pad + 1
    cands = torch.stack(
        [padded[:, :, i : i + size, j : j + size] for i in range(span) for j in range(span)], 1
    )  # [n, 81, C, S, S]
    cands = torch.cat([cands, cands.flip(-1)], 1)
    match = (cands - out[:, None]).abs().amax((2, 3, 4)) == 0
    assert bool(match.any(1).all())
    assert bool((out == 0).any())  # some padding shows


def test_cropflip_flip_rate_and_uint8() -> None:
    torch.manual_seed(9)
    size = 32
    ramp = (torch.arange(size) + 1).to(torch.uint8).expand(1, 3, size, size)  # column index + 1
    out = CropFlip(size)(ramp.expand(4096, -1, -1, -1))
    assert out.dtype == torch.uint8 and out.shape == (4096, 3, size, size)
    mid = out[:, 0, size // 2].long()  # row 16 and columns 8, 9 always show image pixels
    assert bool(((mid[:, 8] - mid[:, 9]).abs() == 1).all())
    flipped = (mid[:, 8] > mid[:, 9]).float()
    assert abs(float(flipped.mean()) - 0.5) < 0.03
    kept = CropFlip(size, flip=False)(ramp.expand(256, -1, -1, -1))[:, 0, size // 2].long()
    assert bool((kept[:, 9] - kept[:, 8] == 1).all())


# ---- a preset's adaptation of the published views ---------------------------------------------


def test_view_adaptation_raises_the_crop_and_drops_flips() -> None:
    adapt = aug.ViewAdaptation(min_crop_scale=0.5, flip=False)
    v = adapt.simclr_views(16, scale=(0.08, 1.0), colour_first=True)
    assert v.scale == (0.5, 1.0) and not v.flip and v.colour_first
    assert adapt.simclr_views(16, scale=(0.6, 1.0)).scale == (0.6, 1.0)  # never lowers a published bound
    assert aug.ViewAdaptation(min_crop_scale=0.9).simclr_views(16, scale=(0.08, 0.8)).scale == (0.9, 0.9)
    assert aug.ViewAdaptation().simclr_views(16, scale=(0.08, 1.0)).scale == (0.08, 1.0)
    assert aug.ViewAdaptation().simclr_views(16).flip and aug.ViewAdaptation().crop_flip(16, 2).flip
    assert not adapt.crop_flip(16, 2).flip and adapt.crop_flip(16, 2).padding == 2
    with pytest.raises(ValueError):
        aug.ViewAdaptation(min_crop_scale=1.5)
    # realised views: areas at least the bound, never flipped
    torch.manual_seed(0)
    out = adapt.simclr_views(SIZE, p_jitter=0.0, p_gray=0.0)(_coordinate_image(SIZE)[None].expand(512, -1, -1, -1))
    area, flipped = _crop_stats(out, SIZE)
    assert float(area.min()) >= 0.5 - 2 / SIZE and not bool(flipped.any())
    x = torch.rand(64, 3, 8, 8)
    torch.manual_seed(0)
    crops = adapt.crop_flip(8, 1)(x)
    assert all(any(torch.equal(c, torch.nn.functional.pad(xi, (1, 1, 1, 1))[:, t : t + 8, s : s + 8])
                   for t in range(3) for s in range(3)) for c, xi in zip(crops, x))
