"""The ``teacher`` stage: DeACL's SimCLR teacher, pretrained by acbench or read from a user's file.

DeACL's release does not ship its teacher (solo-learn's ``simclr-cifar10-b30xch14-ep=999.ckpt``).
By default acbench pretrains ``deacl-teacher`` (SimCLR with solo-learn's recipe,
:class:`methods.deacl.DeACLTeacher`) on the same data, preset and seed: an ordinary pretrain stage,
so a ``deacl-teacher`` run and every DeACL run on that data share it. With the method parameter
``teacher_file`` (an acbench ``encoder.pt``, e.g. from ``acbench import`` or another run) the stage
reads that encoder instead; its key holds the file's SHA-256.

Either way the stage takes the encoder's finetuned BN branch as a plain-BN backbone, loads it
strictly into the student's backbone (a checkpoint of another shape is a one-line error naming the
file and the first mismatches, raised before anything is written) and stores it as
``<results>/runs/teacher/<key>/teacher.pt``. It is a shared stage: ``--force`` on ``deacl`` never
retrains the teacher (delete its folder, or the teacher's pretrain folder, to rebuild it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmark.checkpoints import ENCODER
from benchmark.errors import ConfigError
from benchmark.io import load_checkpoint, save_checkpoint
from benchmark.models import (
    BackboneConfig,
    CheckpointMismatch,
    ResNet,
    branch_state_dict,
    load_strict,
)
from benchmark.stage import RunOptions, Stage, StageRun
from benchmark.stages import UPSTREAM, PretrainStage

TEACHER = "teacher.pt"
TEACHER_METHOD = "deacl-teacher"


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise ConfigError(f"cannot read teacher checkpoint {path}: {e.strerror or e}") from None


def read_teacher(path: Path, backbone: BackboneConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The plain-BN backbone weights of the encoder checkpoint ``path`` (its finetuned branch),
    checked strictly against ``backbone``; returns (state dict, info). A file that is not an
    encoder checkpoint, or whose weights do not fit ``backbone``, is a one-line error naming it."""
    ck = load_checkpoint(path, kind="encoder")
    state = {k[len("encoder."):]: v for k, v in ck["state_dict"].items() if k.startswith("encoder.")}
    branch = ck.get("finetune_branch", "normal")
    try:
        plain = branch_state_dict(state, branch)
    except CheckpointMismatch as e:
        raise CheckpointMismatch(f"teacher checkpoint {path}: {e}") from None
    load_strict(ResNet(backbone, branches=None), plain, f"teacher checkpoint {path}")
    return plain, {"method": ck.get("method"), "branch": branch, "backbone": ck.get("backbone")}


@dataclass(frozen=True)
class TeacherStage(Stage):
    kind = "teacher"
    shared = True

    consumer: PretrainStage  # the DeACL pretraining that distils the teacher

    @property
    def file(self) -> str | None:
        return self.consumer.params.get("teacher_file")

    def backbone(self) -> BackboneConfig:
        """The student's backbone, which the teacher must fit."""
        c = self.consumer
        data = c.data()
        return BackboneConfig(c.preset.backbone_for(c.dataset), data.channels, data.mean, data.std)

    def pretrain(self) -> PretrainStage:
        c = self.consumer
        # the teacher's backbone must be the student's: the stem padding is shared (DeACL's 2 as released)
        shared = {k: c.params[k] for k in ("stem_padding",) if k in c.params}
        return PretrainStage(c.opts, TEACHER_METHOD, shared, c.preset, c.dataset, c.seed)

    def upstream(self) -> dict[str, Stage]:
        return {} if self.file else {"pretrain": self.pretrain()}

    def config(self) -> dict[str, Any]:
        c = self.consumer
        backbone = self.backbone().name
        if self.file:
            return {"source": "file", "sha256": _sha256(Path(self.file)), "backbone": backbone}
        return {"encoder": TEACHER_METHOD, "dataset": c.dataset, "seed": c.seed, "backbone": backbone}

    def notes(self) -> dict[str, Any]:
        return {"teacher_file": str(self.file)} if self.file else {}

    def source(self, opts: RunOptions, upstream: dict[str, str]) -> Path:
        if self.file:
            return Path(self.file)
        return opts.store.dir(self.pretrain().kind, upstream["pretrain"]) / ENCODER

    def prepare(self, opts: RunOptions, upstream: dict[str, str]) -> None:
        read_teacher(self.source(opts, upstream), self.backbone())

    def run(self, run: StageRun) -> dict[str, Any]:
        path = self.source(run.opts, run.upstream)
        state, info = read_teacher(path, self.backbone())
        save_checkpoint(run.dir / TEACHER, "teacher", {"state_dict": state, "source": str(path), **info})
        return {"source": str(path), "method": info["method"], "branch": info["branch"]}

    def outputs(self, opts: RunOptions, key: str) -> dict[str, Any]:
        """What DeACL gets: ``{"teacher": {"state_dict": plain-BN backbone weights, "source": path}}``."""
        path = opts.store.dir(self.kind, key) / TEACHER
        ck = load_checkpoint(path, kind="teacher")
        return {"teacher": {"state_dict": ck["state_dict"], "source": str(path)}}


UPSTREAM.register("teacher")(TeacherStage)
