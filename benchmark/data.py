"""Datasets held in memory as uint8 tensors (DESIGN.md, "Datasets").

``load_dataset(name)`` returns a :class:`Dataset`: labelled training images minus a fixed
validation split, the validation split (model selection), the test split (evaluation only), the
images used for self-supervised pretraining, and per-channel normalisation statistics.

Splits (fixed: they do not depend on ``seed``, so every run and every seed sees the same images;
the validation split is stratified by class and drawn with a fixed generator seed, ``SPLIT_SEED``):

========== ======= ===== ====== =========================================================
name       train   val   test   pretrain_x
========== ======= ===== ====== =========================================================
digits     1,257   180   360    train_x (test stratified: 35-37 per class; val 18 per class)
synthetic  1,000   200   500    train_x (generated in memory; tests only)
cifar10    49,000  1,000 10,000 train_x (100 val images per class)
cifar100   49,000  1,000 10,000 train_x (10 val images per class)
stl10      4,500   500   8,000  the 100,000 unlabeled images followed by train_x
========== ======= ===== ====== =========================================================

The CIFAR and STL-10 files are read in the on-disk formats that torchvision downloads
(``cifar-10-batches-py``, ``cifar-100-python``, ``stl10_binary``) by small readers here, which
check the structure of every file (keys, shapes, dtypes, label ranges) rather than its md5, so a
file that exists but is not what it claims raises :class:`DataError` naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmark.data_files import DataError, _n_from, read_cifar, read_stl10
from benchmark.errors import did_you_mean

__all__ = [
    "DATASETS",
    "SPLIT_SEED",
    "DataError",
    "Dataset",
    "default_data_dir",
    "load_dataset",
    "make_synthetic",
]

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "stl10")
SPLIT_SEED = 0  # the generator seed of every validation split (fixed, so splits never move)

# default validation sizes (images), documented in the module docstring
_DEFAULT_VAL = {"digits": 180, "synthetic": 200, "cifar10": 1000, "cifar100": 1000, "stl10": 500}
_DIGITS_TEST = 360  # stratified: 35-37 images per class


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no boolean ==
class Dataset:
    """One dataset in memory. Images are uint8 ``[N, C, H, W]``, labels int64 ``[N]``."""

    name: str
    train_x: torch.Tensor  # labelled training images (minus the validation split)
    train_y: torch.Tensor
    val_x: torch.Tensor  # fixed validation split carved from the training set (model selection)
    val_y: torch.Tensor
    test_x: torch.Tensor  # touched only by evaluation
    test_y: torch.Tensor
    pretrain_x: torch.Tensor  # images for self-supervised pretraining
    num_classes: int
    mean: tuple[float, float, float]  # per-channel statistics of train_x in [0, 1]
    std: tuple[float, float, float]
    train_index: torch.Tensor | None = None  # each train_x image's index in the source's training set

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(
                    f"{split}_x must be uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{split}_y must be int64 [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}"
                )
            if x.shape[1:] != self.train_x.shape[1:]:
                raise ValueError(
                    f"{split}_x images are {tuple(x.shape[1:])}, train_x's {tuple(self.train_x.shape[1:])}"
                )
        if (
            self.pretrain_x.dtype != torch.uint8
            or self.pretrain_x.shape[1:] != self.train_x.shape[1:]
        ):
            raise ValueError("pretrain_x must be uint8 images shaped like train_x")

    @property
    def image_size(self) -> int:
        """Height (= width) of every image."""
        return int(self.train_x.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train_x)}, val={len(self.val_x)}, "
            f"test={len(self.test_x)}, pretrain={len(self.pretrain_x)}, "
            f"classes={self.num_classes}, images={tuple(self.train_x.shape[1:])})"
        )


def default_data_dir() -> Path:
    """``$ACBENCH_DATA_DIR`` if set, else ``~/.cache/acbench/data`` (never the working directory)."""
    env = os.environ.get("ACBENCH_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "acbench" / "data"


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_size: int | float | None = None,
    seed: int = 0,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) into memory.

    Args:
        name: dataset name.
        data_dir: folder holding (or receiving) the downloaded datasets; default
            :func:`default_data_dir`. Unused by ``digits`` and ``synthetic``.
        download: download CIFAR / STL-10 through torchvision when missing (needs network).
        image_size: resize every image to this square size (bilinear, antialiased). Default: the
            native size (``digits``: 16, upscaled from 8x8; ``synthetic``: 16).
        val_size: validation images carved from the training set: an int count or a float
            fraction. Default per dataset (see the module docstring).
        seed: seeds the ``synthetic`` generator only; real datasets' splits are fixed.

    Raises:
        DataError: unknown name, data missing (with the fix), or a file that is not what it claims.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}{did_you_mean(name.lower(), DATASETS)}; "
                        f"choose from {', '.join(DATASETS)}")
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size}")
    val = _DEFAULT_VAL[name] if val_size is None else val_size
    if name == "digits":
        return _load_digits(image_size or 16, val)
    if name == "synthetic":
        return _synthetic(image_size=image_size or 16, val_size=val, seed=seed)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if name in ("cifar10", "cifar100"):
        x, y, test_x, test_y, num_classes = read_cifar(name, root, download, image_size)
        return _assemble(name, x, y, test_x, test_y, num_classes, val)
    x, y, test_x, test_y, unlabeled = read_stl10(root, download, image_size, val)
    return _assemble("stl10", x, y, test_x, test_y, 10, val, unlabeled=unlabeled)


# ---- splits and statistics ------------------------------------------------------------------


def _stratified_split(y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (rest, held) with ``n`` held out, per class in proportion to its size.

    Deterministic: a fixed permutation (generator seed ``SPLIT_SEED``), then the first k_c images
    of class c in that order; k_c = n * n_c / N rounded by largest remainder so they sum to n.
    """
    counts = torch.bincount(y).to(torch.float64)
    quota = counts * n / len(y)
    k = quota.floor().long()
    short = n - int(k.sum())
    if short > 0:  # largest remainders first, ties to the lower class index
        order = torch.argsort(-(quota - k), stable=True)
        k[order[:short]] += 1
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    yp = y[perm]
    # rank of each permuted image within its class: held if rank < k[class]
    onehot = F.one_hot(yp, len(counts))
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1
    held = rank < k[yp]
    return perm[~held].sort().values, perm[held].sort().values


def _channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images, in [0, 1] units."""
    s = torch.zeros(x.shape[1], dtype=torch.float64)
    sq = torch.zeros_like(s)
    for chunk in x.split(8192):  # chunks: float64 copies of a whole CIFAR would take 1.2 GB
        c = chunk.to(torch.float64) / 255.0
        s += c.sum((0, 2, 3))
        sq += (c * c).sum((0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (sq / n - mean**2).clamp_min(0).sqrt()
    if x.shape[1] == 1:  # single-channel images: the same statistics for all three entries
        mean, std = mean.expand(3), std.expand(3)
    return [float(v) for v in mean], [float(v) for v in std]


def _assemble(
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    val_size: int | float,
    unlabeled: torch.Tensor | None = None,
) -> Dataset:
    """Carve the validation split from (x, y) and compute the statistics.

    ``unlabeled``, if given, becomes ``pretrain_x``: its last ``len(train_x)`` rows are reserved
    (uninitialised) and receive ``train_x`` here, which avoids a second copy of STL's 2.8 GB.
    """
    n_val = _n_from(val_size, len(y), "val_size")
    rest, held = _stratified_split(y, n_val)
    train_x, train_y = x[rest], y[rest]
    pretrain_x = train_x
    if unlabeled is not None:
        pretrain_x = unlabeled
        if len(train_x):
            pretrain_x[-len(train_x) :] = train_x
    mean, std = _channel_stats(train_x)
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        val_x=x[held],
        val_y=y[held],
        test_x=test_x,
        test_y=test_y,
        pretrain_x=pretrain_x,
        num_classes=num_classes,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        train_index=rest,
    )


# ---- digits ---------------------------------------------------------------------------------


def _load_digits(image_size: int, val_size: int | float) -> Dataset:
    """scikit-learn's 1,797 real 8x8 digits: uint8, upscaled (bilinear), 3 identical channels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = torch.from_numpy(bunch.images).float().unsqueeze(1) * (255.0 / 16.0)  # values 0..16
    x = F.interpolate(
        raw, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(bunch.target).long()
    rest, test = _stratified_split(y, _DIGITS_TEST)
    return _assemble("digits", x[rest], y[rest], x[test], y[test], 10, val_size)


# ---- synthetic ------------------------------------------------------------------------------


def make_synthetic(
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 500,
    num_classes: int = 10,
    image_size: int = 16,
    seed: int = 0,
) -> Dataset:
    """A small learnable dataset generated in memory (deterministic given ``seed``).

    Class c is a colour (hue c / num_classes) times an oriented cosine grating (angle and
    frequency depend on c); each image has a random phase, contrast and brightness, plus noise.
    The validation split (``n_val`` images) is carved from ``n_train + n_val`` labelled images.
    """
    g = torch.Generator().manual_seed(seed)
    n_pool = n_train + n_val

    def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=g)]
        c = y.float()
        hue = c / num_classes
        # hue -> RGB on the colour wheel (channel phase offsets 0, 1/3, 2/3), kept in [0.2, 1]
        colour = 0.6 + 0.4 * torch.cos(
            2 * torch.pi * (hue[:, None] - torch.tensor([0.0, 1 / 3, 2 / 3]))
        )
        theta = torch.pi * c / num_classes
        freq = 1.0 + (y % 3).float()  # cycles per image
        coords = (torch.arange(image_size).float() + 0.5) / image_size
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        phase = 2 * torch.pi * torch.rand(n, generator=g)
        proj = xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None]
        grating = torch.cos(2 * torch.pi * freq[:, None, None] * proj + phase[:, None, None])
        contrast = 0.25 + 0.1 * torch.rand(n, 1, 1, 1, generator=g)
        level = 0.45 + 0.1 * torch.rand(n, 1, 1, 1, generator=g)
        img = colour[:, :, None, None] * (level + contrast * grating[:, None])
        img = img + 0.05 * torch.randn(n, 3, image_size, image_size, generator=g)
        return (img.clamp(0, 1) * 255).round().to(torch.uint8), y

    x, y = images(n_pool)
    test_x, test_y = images(n_test)
    return _assemble("synthetic", x, y, test_x, test_y, num_classes, n_pool - n_train)


def _synthetic(image_size: int, val_size: int | float, seed: int) -> Dataset:
    n_val = _n_from(val_size, 1200, "val_size")  # 1,200 labelled images, as in the defaults
    return make_synthetic(n_train=1200 - n_val, n_val=n_val, image_size=image_size, seed=seed)


