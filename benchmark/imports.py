"""The ``import`` stage: a released pretrained encoder, as a pretraining stage of the run store.

``acbench import FILE --format F --method M --dataset D`` maps a checkpoint saved by an original
repository onto acbench's encoder for method M (:mod:`benchmark.released`: strict, every tensor
mapped or a named error; safe loading) and stores it as ``runs/import/<key>/encoder.pt`` with its
provenance (format, file SHA-256, source). The key holds the file's SHA-256, not its path, so a
moved file is the same stage and an edited one another. ``acbench run --pretrained KEY`` (and a
suite's ``pretrained`` table) then finetunes and evaluates it under either protocol like any
pretrained encoder; its records carry the provenance and its leaderboard row says "released
checkpoint".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.checkpoints import ENCODER
from benchmark.errors import ConfigError
from benchmark.io import save_checkpoint
from benchmark.models import BackboneConfig
from benchmark.released import Imported, file_sha256, fit_to_model, read_released
from benchmark.stage import RunOptions, Stage, StageRun
from benchmark.store import RunStore
from methods import get_method

KIND = "import"


def _sha256(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return file_sha256(path)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None


@dataclass(frozen=True)
class ImportStage(Stage):
    kind = KIND

    file: str
    format: str
    method: str
    dataset: str
    sha256: str
    head_file: str | None = None
    head_sha256: str | None = None

    @classmethod
    def of_file(cls, file: str | Path, fmt: str, method: str, dataset: str,
                head_file: str | Path | None = None) -> ImportStage:
        file = str(Path(file).resolve())
        head = str(Path(head_file).resolve()) if head_file else None
        return cls(file, fmt, method, dataset, _sha256(file), head, _sha256(head))

    @classmethod
    def stored(cls, store: RunStore, key: str) -> ImportStage:
        """The import stage ``key`` of the run store (``--pretrained KEY``)."""
        if not store.is_done(KIND, key):
            raise ConfigError(f"no imported checkpoint {key!r} in {store.root / 'runs' / KIND}; "
                              "run `acbench import FILE --format F --method M --dataset D` first")
        cfg = json.loads((store.dir(KIND, key) / "config.json").read_text())
        return cls(cfg["file"], cfg["format"], cfg["method"], cfg["dataset"], cfg["sha256"], cfg.get("head_file"),
                   cfg.get("head_sha256"))

    def config(self) -> dict[str, Any]:
        return {"format": self.format, "method": self.method, "dataset": self.dataset, "sha256": self.sha256,
                **({"head_sha256": self.head_sha256} if self.head_sha256 else {})}

    def mapped(self) -> Imported:
        """The release mapped and checked against the method's model (nothing written)."""
        if _sha256(self.file) != self.sha256:
            raise ConfigError(f"{self.file} changed since it was imported (SHA-256 differs): import it again")
        imp = read_released(self.file, self.format, self.method, self.head_file)
        m = get_method(self.method, dataset=self.dataset)
        model = m.build_model(BackboneConfig.from_dict(imp.backbone))
        return fit_to_model(imp, model.state_dict(), m.finetune_branch)

    def notes(self) -> dict[str, Any]:
        return {"file": self.file, "head_file": self.head_file}

    def prepare(self, opts: RunOptions, upstream: dict[str, str]) -> None:
        self.mapped()

    def run(self, run: StageRun) -> dict[str, Any]:
        imp = self.mapped()
        params = get_method(self.method, dataset=self.dataset).describe()["params"]
        save_checkpoint(run.dir / ENCODER, "encoder", imp.encoder_payload(params, self.config()))
        return {"provenance": imp.provenance, "precision": "released", "backbone": imp.backbone["name"]}

    def describe(self) -> str:
        return f"import {self.format} {Path(self.file).name} as {self.method}"
