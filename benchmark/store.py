"""The run store: each stage's output in ``<results>/runs/<stage>/<key>/``.

key = hash of (stage config, upstream keys, code-version tag). A stage directory holds
``config.json``, its artifacts and is complete only when ``done.json`` is atomically renamed in.
Re-running skips complete stages; a lock file keeps two processes from running one stage twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.io import atomic_write_json

# Bump when a change alters what a stage produces: old results then stop matching.
CODE_VERSION = "acbench-stages/3"  # 2: released forms as defaults, resolved method parameters in the key;
# 3: CPU stages in the channels-last layout (float rounding differs)
DONE = "done.json"
FAILED = "error.json"


def _locked(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def _describe(d: Path) -> str:
    """A short description of a stage from its config.json."""
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    c = cfg.get("config", cfg)
    parts = [str(c[k]) for k in ("method", "dataset") if k in c]
    if "seed" in c:
        parts.append(f"seed {c['seed']}")
    if "finetune" in c:
        parts.append(c["finetune"].get("scheme", ""))
    if "attacks" in c:
        parts.append("+".join(c["attacks"]))
    return " ".join(parts)


def stage_key(stage: str, config: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    blob = json.dumps(
        {"stage": stage, "config": config, "upstream": upstream or {}, "code": CODE_VERSION},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunStore:
    root: Path  # the results folder

    def dir(self, stage: str, key: str) -> Path:
        return self.root / "runs" / stage / key

    def is_done(self, stage: str, key: str) -> bool:
        return (self.dir(stage, key) / DONE).is_file()

    def done_info(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.dir(stage, key) / DONE).read_text())

    def begin(self, stage: str, key: str, config: dict[str, Any], force: bool = False) -> Path:
        d = self.dir(stage, key)
        if force and d.exists():
            for p in d.iterdir():
                if p.name != ".lock":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "config.json", config)
        return d

    def finish(self, stage: str, key: str, info: dict[str, Any]) -> None:
        atomic_write_json(self.dir(stage, key) / DONE, {**info, "finished": time.time()})

    def fail(self, stage: str, key: str, error: BaseException) -> None:
        atomic_write_json(self.dir(stage, key) / FAILED, {"error": f"{type(error).__name__}: {error}",
                                                         "time": time.time()})

    @contextlib.contextmanager
    def running(self, stage: str, key: str) -> Iterator[None]:
        """Lock the stage and record a failure (``error.json``) if the body raises."""
        with self.lock(stage, key):
            (self.dir(stage, key) / FAILED).unlink(missing_ok=True)
            try:
                yield
            except BaseException as e:
                if not isinstance(e, (KeyboardInterrupt, SystemExit)):
                    self.fail(stage, key, e)
                raise

    def stages(self) -> list[dict[str, Any]]:
        """Every stage folder with its state: done, running, failed or incomplete."""
        rows = []
        runs = self.root / "runs"
        if not runs.is_dir():
            return rows
        for stage_dir in sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("_")):
            for d in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
                state, seconds = "incomplete", None
                if (d / DONE).is_file():
                    state = "done"
                    try:
                        seconds = json.loads((d / DONE).read_text()).get("seconds")
                    except (OSError, ValueError):
                        state = "corrupt"
                elif _locked(d / ".lock"):
                    state = "running"
                elif (d / FAILED).is_file():
                    state = "failed"
                rows.append({"stage": stage_dir.name, "key": d.name, "state": state, "seconds": seconds,
                             "what": _describe(d), "dir": str(d)})
        return rows

    @contextlib.contextmanager
    def lock(self, stage: str, key: str) -> Iterator[None]:
        """Exclusive lock on one stage (blocks while another process runs it)."""
        d = self.dir(stage, key)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
