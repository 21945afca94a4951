"""Atomic file writes and safe checkpoint loading.

Every record, checkpoint and leaderboard is written to a temporary file in the same folder and
renamed into place, so an interrupted write leaves the old file or the new one, never half.
Checkpoints are loaded with ``weights_only=True``: a pickle that would run code is refused.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import AcbenchError

FORMAT_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(AcbenchError, ValueError):
    """A checkpoint that cannot be used: unsafe, corrupt, of another kind or version."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path: Path, kind: str, payload: dict[str, Any]) -> None:
    """Save ``payload`` (tensors, numbers, strings, lists, dicts) with its kind and format version."""
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "kind": kind, **payload}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    Raises :class:`CheckpointError` naming the file for: a missing file, a pickle that needs
    arbitrary code (refused, never run), a truncated or corrupted file, another kind or version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain-weights checkpoint (loading it would run "
            f"code). Only files written by acbench are accepted. ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({msg[:160]})") from None
    if not isinstance(obj, dict) or "format_version" not in obj or "kind" not in obj:
        raise CheckpointError(f"{path} is not an acbench checkpoint (no format_version/kind)")
    if obj["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {obj['format_version']}, this acbench reads {FORMAT_VERSION}"
        )
    if kind is not None and obj["kind"] != kind:
        raise CheckpointError(f"{path} holds a {obj['kind']!r} checkpoint, expected {kind!r}")
    return obj
