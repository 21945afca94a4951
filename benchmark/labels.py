"""Pseudo-label files: one integer array per nominal cluster count, in an ``.npz`` archive.

AdvCL's cross-entropy term trains one head per granularity k (``fc_k``) on dataset-index-aligned
pseudo-labels. A label file holds one 1-D integer array per k, keys ``k2``, ``k10``, ...; array
``k<h>`` has one label in ``[0, h)`` per pretraining image. The ``pseudo_labels`` stage writes such
files (k-means) and reads the user's (``pseudo_labels_file``); both go through
:func:`check_pseudo_labels`, so a bad file is refused with one line naming the file and the problem.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.io import atomic_write_bytes


def _nominal(key: Any) -> Any:
    """``"k10"`` -> 10; other keys (ints) unchanged."""
    return int(key[1:]) if isinstance(key, str) and key[:1] == "k" and key[1:].isdigit() else key


def check_pseudo_labels(
    labels: Mapping[Any, Any], n: int | None, where: str, clusters: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Validate pseudo-labels and return ``{h: int64 tensor}`` for every h in ``clusters``.

    ``labels`` maps ``"k<h>"`` (or ``h``) to a 1-D integer array (numpy or torch) of labels in
    ``[0, h)``, one per pretraining image (``n`` of them when given). Raises :class:`ConfigError`
    whose message starts with ``where`` (the file or stage the labels come from).
    """
    found = {_nominal(k): v for k, v in labels.items()}
    missing = [f"k{h}" for h in clusters if h not in found]
    if missing:
        raise ConfigError(
            f"{where}: missing pseudo-label arrays {', '.join(missing)} (need one integer array "
            f"per k: {', '.join(f'k{h}' for h in clusters)})"
        )
    out: dict[int, torch.Tensor] = {}
    for h in clusters:
        a = found[h]
        a = a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
            raise ConfigError(f"{where}: k{h} must hold integers, got dtype {a.dtype}")
        if a.ndim != 1:
            raise ConfigError(f"{where}: k{h} must be 1-D (one label per image), got shape {a.shape}")
        if n is not None and len(a) != n:
            raise ConfigError(
                f"{where}: k{h} has {len(a)} labels but there are {n} pretraining images "
                "(labels must be aligned with the pretraining images, after train_limit)"
            )
        if len(a) and (a.min() < 0 or a.max() >= h):
            raise ConfigError(
                f"{where}: k{h} labels must be in [0, {h}), got values in [{a.min()}, {a.max()}]"
            )
        out[h] = torch.from_numpy(a.astype(np.int64))
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise ConfigError(f"{where}: the arrays have different lengths {sorted(lengths)}")
    return out


def load_pseudo_labels(
    path: str | Path, n: int | None, clusters: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Read and validate a pseudo-label ``.npz`` file (see :func:`check_pseudo_labels`)."""
    path = Path(path).expanduser()
    where = f"pseudo-label file {path}"
    if not path.is_file():
        raise ConfigError(f"{where} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ConfigError(f"{where} is not an .npz archive of arrays {', '.join(f'k{h}' for h in clusters)}")
        with archive:
            labels = {k: archive[k] for k in archive.files}
    except ConfigError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ConfigError(f"{where} cannot be read as .npz ({e})") from None
    return check_pseudo_labels(labels, n, where, clusters)


def save_pseudo_labels(path: str | Path, labels: Mapping[Any, Any]) -> None:
    """Write ``labels`` (``h`` or ``"k<h>"`` -> 1-D integer array) atomically as an ``.npz`` file
    with keys ``k<h>``, readable by :func:`load_pseudo_labels`."""
    arrays = {
        f"k{_nominal(k)}": v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        for k, v in labels.items()
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())
