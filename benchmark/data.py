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
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import AcbenchError, did_you_mean

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
_DOWNLOAD_HINT = (
    "Run again with --download (needs network), or point --data-dir at a folder holding it."
)


class DataError(AcbenchError):
    """A clear, user-facing data problem (message names the directory / file and the fix)."""


def _missing_file(path: Path) -> DataError:
    return DataError(
        f"{path} is missing: the folder {path.parent} is incomplete. Delete it and run again "
        "with --download (needs network), or copy the complete dataset there."
    )


def _damaged(path: Path, detail: str) -> DataError:
    """The error for a file that exists but is not what it claims."""
    return DataError(
        f"{path}: {detail}. The file is damaged or not the dataset's own: delete {path.parent} "
        "and run again with --download, or replace the file."
    )


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
        return _load_cifar(name, root, download, image_size, val)
    return _load_stl10(root, download, image_size, val)


# ---- splits and statistics ------------------------------------------------------------------


def _n_from(size: int | float, total: int, what: str) -> int:
    """A count from an int count or a float fraction in [0, 1) of ``total``."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise DataError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, float) and 0.0 <= size < 1.0:
        return round(size * total)
    if size != int(size) or not 0 <= size < total:
        raise DataError(
            f"{what} must be a count in [0, {total}) or a fraction in [0, 1), got {size}"
        )
    return int(size)


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


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images to ``size`` x ``size`` (bilinear, antialiased like torchvision), in chunks."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, x.shape[0], 4096):
        c = x[i : i + 4096].float()
        c = F.interpolate(
            c, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[i : i + 4096] = c.round_().clamp_(0, 255).to(torch.uint8)
    return out


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


# ---- CIFAR ----------------------------------------------------------------------------------

_CIFAR = {
    # name: (title, folder, train files, test files, label key, classes, torchvision class)
    "cifar10": (
        "CIFAR-10",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
        10,
        "CIFAR10",
    ),
    "cifar100": (
        "CIFAR-100",
        "cifar-100-python",
        ["train"],
        ["test"],
        "fine_labels",
        100,
        "CIFAR100",
    ),
}

# what a CIFAR pickle may contain: numpy arrays (as Python 2 and 3 numpy pickle them) and bytes
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only, so a stray file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module.startswith("numpy.core"):  # Python 2 era path; numpy 2 moved it to numpy._core
            try:
                return super().find_class(module.replace("numpy.core", "numpy._core"), name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _read_cifar_file(
    path: Path, label_key: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR batch file -> (uint8 [N, 3, 32, 32], int64 [N]); DataError naming the file."""
    if not path.is_file():
        raise _missing_file(path)
    try:
        with open(path, "rb") as f:
            # latin1, as torchvision does: the real files are Python 2 pickles of numpy arrays
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise _damaged(path, f"not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise _damaged(
            path, f"holds a {type(obj).__name__}, expected a dict with 'data' and {label_key!r}"
        )
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    for key in ("data", label_key):
        if key not in d:
            raise _damaged(path, f"no {key!r} entry (keys: {sorted(map(str, d))})")
    data, labels = d["data"], d[label_key]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise _damaged(path, f"'data' must be a uint8 array [N, 3072], got {desc}")
    try:
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError) as e:
        raise _damaged(path, f"{label_key!r} is not a list of integers ({e})") from e
    if y.shape != (data.shape[0],):
        raise _damaged(path, f"{y.numel()} labels for {data.shape[0]} images")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise _damaged(
            path, f"labels range {int(y.min())}..{int(y.max())}, expected 0..{num_classes - 1}"
        )
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, y


def _torchvision_download(title: str, root: Path, cls_name: str, **kwargs: Any) -> None:
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    try:
        getattr(tvd, cls_name)(str(root), download=True, **kwargs)
    except Exception as e:  # network errors come in many types; all mean the same to the user
        raise DataError(
            f"Downloading {title} into {root} failed ({type(e).__name__}: {e}). Check the network, "
            "or download it elsewhere and point --data-dir at the folder holding it."
        ) from e


def _load_cifar(
    name: str, root: Path, download: bool, image_size: int | None, val_size: int | float
) -> Dataset:
    title, folder, train_files, test_files, label_key, num_classes, cls_name = _CIFAR[name]
    base = root / folder
    if not base.is_dir():
        if not download:
            raise DataError(f"{title} not found in {root} (expected {base}). {_DOWNLOAD_HINT}")
        _torchvision_download(title, root, cls_name, train=False)  # test: the smaller load
    parts = [_read_cifar_file(base / f, label_key, num_classes) for f in train_files]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    parts = [_read_cifar_file(base / f, label_key, num_classes) for f in test_files]
    test_x, test_y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if image_size is not None:
        x, test_x = _resize_uint8(x, image_size), _resize_uint8(test_x, image_size)
    return _assemble(name, x, y, test_x, test_y, num_classes, val_size)


# ---- STL-10 ---------------------------------------------------------------------------------

_STL_FOLDER = "stl10_binary"
_STL_BYTES = 3 * 96 * 96


def _read_stl_images(path: Path, image_size: int | None, reserve: int = 0) -> torch.Tensor:
    """An STL-10 ``*_X.bin`` file -> uint8 [N + reserve, 3, S, S], read in chunks to bound memory.

    The last ``reserve`` rows are left uninitialised for the caller to fill.
    """
    if not path.is_file():
        raise _missing_file(path)
    nbytes = path.stat().st_size
    if nbytes == 0 or nbytes % _STL_BYTES:
        raise _damaged(
            path, f"{nbytes} bytes, not a whole number of 3x96x96 images ({_STL_BYTES} bytes each)"
        )
    n = nbytes // _STL_BYTES
    size = image_size or 96
    out = torch.empty((n + reserve, 3, size, size), dtype=torch.uint8)
    chunk = 8192  # 226 MB of raw pixels per read: the unlabeled split is 2.8 GB
    with open(path, "rb") as f:
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            raw = np.frombuffer(f.read(m * _STL_BYTES), dtype=np.uint8).reshape(m, 3, 96, 96)
            # stored column-major per channel: transpose H and W, as torchvision does
            imgs = torch.from_numpy(raw.copy()).permute(0, 1, 3, 2)
            out[i : i + m] = _resize_uint8(imgs, size) if size != 96 else imgs
    return out


def _read_stl_labels(path: Path, n: int) -> torch.Tensor:
    """An STL-10 ``*_y.bin`` file (uint8 labels 1..10) -> int64 labels 0..9."""
    if not path.is_file():
        raise _missing_file(path)
    y = torch.from_numpy(np.fromfile(path, dtype=np.uint8).astype(np.int64))
    if len(y) != n:
        raise _damaged(path, f"{len(y)} labels for {n} images")
    if n and (int(y.min()) < 1 or int(y.max()) > 10):
        raise _damaged(path, f"labels range {int(y.min())}..{int(y.max())}, expected 1..10")
    return y - 1


def _load_stl10(
    root: Path, download: bool, image_size: int | None, val_size: int | float
) -> Dataset:
    base = root / _STL_FOLDER
    if not base.is_dir():
        if not download:
            raise DataError(f"STL-10 not found in {root} (expected {base}). {_DOWNLOAD_HINT}")
        _torchvision_download("STL-10", root, "STL10", split="test")  # the smallest split to load
    x = _read_stl_images(base / "train_X.bin", image_size)
    y = _read_stl_labels(base / "train_y.bin", len(x))
    test_x = _read_stl_images(base / "test_X.bin", image_size)
    test_y = _read_stl_labels(base / "test_y.bin", len(test_x))
    # room for train_x after the unlabeled images: pretrain_x = unlabeled + train (no second copy)
    n_train = len(y) - _n_from(val_size, len(y), "val_size")
    unlabeled = _read_stl_images(base / "unlabeled_X.bin", image_size, reserve=n_train)
    return _assemble("stl10", x, y, test_x, test_y, 10, val_size, unlabeled=unlabeled)
