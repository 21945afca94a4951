"""Common corruptions (Hendrycks & Dietterich, ICLR'19): the CIFAR-10-C / CIFAR-100-C files, and the
15 corruption functions that make them, re-implemented so that any small test set can be corrupted.

Files (read from the data folder, never downloaded): ``<data_dir>/CIFAR-10-C/<corruption>.npy``
(``CIFAR-100-C/`` for CIFAR-100), uint8 ``(5 n, 32, 32, 3)`` NHWC with severity s in rows
``[(s-1) n, s n)`` (n = 10,000 in the released files), and ``labels.npy``, whose first n entries
label every severity block (as RobustBench's ``load_cifar10c`` reads them).

Functions: :func:`corrupt` applies one of :data:`CORRUPTIONS` (:mod:`benchmark.corruption_ops`) at
severity 1-5 to uint8 NHWC images, deterministically given ``seed`` (one random stream per
corruption, severity and seed); :func:`corrupt_resized` corrupts images of another size at 32 px,
where the constants are defined, and resizes them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.corruption_ops import CORRUPTIONS, FUNCTIONS
from benchmark.data_files import DataError

__all__ = ["CORRUPTIONS", "CORRUPTION_VERSION", "SEVERITIES", "CorruptedSets", "check_cifar_c", "corrupt",
           "corrupt_resized", "corrupted_sets", "read_cifar_c"]

SEVERITIES = (1, 2, 3, 4, 5)
CORRUPTION_VERSION = 1  # bump when a corruption function changes: it enters the evaluate key
CIFAR_C_FOLDERS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}
GENERATED_SIZE = 32  # generated sets are corrupted at CIFAR's size, where the constants are defined


# ---- the CIFAR-C files ----------------------------------------------------------------------


def cifar_c_folder(dataset: str, data_dir: Path) -> Path:
    if dataset not in CIFAR_C_FOLDERS:
        raise DataError(f"no corruption files for {dataset!r}: CIFAR-10-C and CIFAR-100-C exist for "
                        "cifar10 and cifar100 only")
    return Path(data_dir).expanduser() / CIFAR_C_FOLDERS[dataset]


def _npy(folder: Path, name: str) -> np.ndarray:
    path = folder / f"{name}.npy"
    if not path.is_file():
        raise DataError(f"corruption file {path.name} not found in {folder} (acbench never downloads "
                        f"{folder.name}: copy the released files there, or point --data-dir at their parent)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from None


def _check_images(path: Path, arr: np.ndarray) -> int:
    """Rows per severity of a corruption file, or DataError naming it."""
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[0] % len(SEVERITIES):
        raise DataError(f"{path}: expected uint8 (5 n, H, W, 3) images, got {arr.dtype} {arr.shape}")
    return arr.shape[0] // len(SEVERITIES)


def check_cifar_c(dataset: str, data_dir: Path, corruptions: tuple[str, ...] = CORRUPTIONS) -> int:
    """The number of images per set when every file is there and in shape, else a one-line
    DataError naming the first missing or damaged file (nothing is read beyond .npy headers)."""
    folder = cifar_c_folder(dataset, data_dir)
    labels = _npy(folder, "labels")
    rows = {_check_images(folder / f"{c}.npy", _npy(folder, c)) for c in corruptions}
    if len(rows) > 1:
        raise DataError(f"{folder}: the corruption files have different sizes ({sorted(rows)} rows per severity)")
    n = rows.pop()
    if labels.ndim != 1 or labels.shape[0] < n or labels.dtype.kind not in "iu":
        raise DataError(f"{folder / 'labels.npy'}: expected at least {n} integer labels, got {labels.dtype} {labels.shape}")
    return n


def read_cifar_c(
    dataset: str, data_dir: Path, corruption: str, severity: int, n: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Severity ``severity`` of one corruption file: (uint8 [n, 3, H, W], int64 [n]); the first ``n``
    images of the block (all when None)."""
    _check_name(corruption, severity)
    folder = cifar_c_folder(dataset, data_dir)
    rows = check_cifar_c(dataset, data_dir, (corruption,))
    take = rows if n is None else min(n, rows)
    start = (severity - 1) * rows
    x = np.array(_npy(folder, corruption)[start : start + take])  # a copy: the memory map is read-only
    y = np.asarray(_npy(folder, "labels")[:take], dtype=np.int64)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y.copy())


# ---- where an evaluation's corrupted sets come from -------------------------------------------


@dataclass(frozen=True, eq=False)
class CorruptedSets:
    """The 75 corrupted test sets of one evaluation: read from CIFAR-C files (``folder``), or made
    here from ``test_x`` (uint8 NCHW) with :func:`corrupt` and ``seed``."""

    dataset: str
    n: int
    folder: Path | None = None
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    seed: int = 0

    def get(self, corruption: str, severity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 [n, C, H, W], int64 [n]) of one set."""
        if self.folder is not None:
            return read_cifar_c(self.dataset, self.folder.parent, corruption, severity, self.n)
        assert self.test_x is not None and self.test_y is not None
        return corrupt_resized(self.test_x, corruption, severity, self.seed), self.test_y

    def settings(self) -> dict[str, object]:
        """What the record says of the sets (always the 15 corruptions x severities 1-5)."""
        common = {"sets": f"{len(CORRUPTIONS)} corruptions x severities 1-{len(SEVERITIES)}", "n_per_set": self.n}
        if self.folder is not None:
            return {"source": f"{self.folder.name} files", **common}
        return {"source": f"{self.dataset} test images corrupted at {GENERATED_SIZE} px (acbench "
                          f"corruptions v{CORRUPTION_VERSION})", "corruption_seed": self.seed, **common}


def corrupted_sets(dataset: str, data_dir: Path, test_x: torch.Tensor, test_y: torch.Tensor,
                   n: int | None, seed: int) -> CorruptedSets:
    """The corrupted sets for ``dataset``: the CIFAR-C files for cifar10/cifar100 (checked now: a
    missing file is a one-line DataError), else ``test_x[:n]`` corrupted here."""
    if dataset in CIFAR_C_FOLDERS:
        rows = check_cifar_c(dataset, data_dir)
        return CorruptedSets(dataset, rows if n is None else min(n, rows), folder=cifar_c_folder(dataset, data_dir))
    if dataset == "stl10":
        raise DataError("no corruption sets for stl10: CIFAR-10-C / CIFAR-100-C cover cifar10 and cifar100 "
                        "(RobustSSL evaluates corruptions in-domain only)")
    k = len(test_x) if n is None else min(n, len(test_x))
    return CorruptedSets(dataset, k, test_x=test_x[:k], test_y=test_y[:k], seed=seed)


# ---- applying a corruption --------------------------------------------------------------------


def _check_name(corruption: str, severity: int) -> None:
    if corruption not in CORRUPTIONS:
        raise DataError(f"unknown corruption {corruption!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise DataError(f"severity must be 1-5, got {severity!r}")


def corrupt(images: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """uint8 (N, H, W, 3) images -> the same under ``corruption`` at ``severity``; deterministic
    given ``seed`` (one random stream per corruption, severity and seed, drawn image by image)."""
    _check_name(corruption, severity)
    images = np.ascontiguousarray(images)  # sums (means, filters) in the order of a decoded image
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DataError(f"corrupt takes uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    rng = np.random.default_rng([seed, CORRUPTIONS.index(corruption), severity])
    fn = FUNCTIONS[corruption]
    out = np.empty_like(images)
    for i, img in enumerate(images):
        out[i] = np.clip(fn(img, severity, rng), 0, 255).astype(np.uint8)  # truncation, as np.uint8
    return out


def corrupt_resized(x: torch.Tensor, corruption: str, severity: int, seed: int = 0,
                    size: int = GENERATED_SIZE) -> torch.Tensor:
    """uint8 NCHW images of any size corrupted at ``size`` px (bilinear, antialiased both ways)."""
    h = x.shape[-1]
    big = _resize(x, size)
    bad = torch.from_numpy(corrupt(big.permute(0, 2, 3, 1).numpy(), corruption, severity, seed))
    return _resize(bad.permute(0, 3, 1, 2).contiguous(), h)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x.contiguous()
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8)
