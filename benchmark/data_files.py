"""The on-disk formats of the downloaded datasets (CIFAR-10/100 pickles, STL-10 binaries), read
safely (no pickle may run code) with errors that name the file and the fix. :mod:`benchmark.data`
turns what these readers return into a :class:`~benchmark.data.Dataset`."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import AcbenchError

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


def read_cifar(
    name: str, root: Path, download: bool, image_size: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """CIFAR-10/100 from torchvision's folder layout: (train x, train y, test x, test y, classes)."""
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
    return x, y, test_x, test_y, num_classes


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


def read_stl10(
    root: Path, download: bool, image_size: int | None, val_size: int | float
) -> tuple[torch.Tensor, ...]:
    """STL-10's binary files: (train x, train y, test x, test y, unlabeled + room for train x)."""
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
    return x, y, test_x, test_y, unlabeled
