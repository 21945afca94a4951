"""The ``pseudo_labels`` stage: AdvCL's pseudo-labels, made by acbench or read from a user's file.

AdvCL's released code clusters the features of an ImageNet-pretrained SimCLR and ships the labels
for CIFAR-10 only. By default acbench pretrains ``simclr`` on the same data, preset and seed (the
pretrain stage, so the run store shares that encoder), extracts backbone features of
``data.pretrain_x`` (after the preset's ``train_limit``; eval mode, "normal" branch) and runs
k-means (scikit-learn, ``n_init=3``, ``random_state=seed``) for each k in
:data:`methods.advcl.CLUSTERS`.

Small datasets: k is capped at ``max(2, n // 10)`` clusters for n images (at least ~10 images per
cluster), e.g. 128 smoke images give k = 2, 10, 12, 12, 12; the digits ``quick`` preset's 1,257
images give 2, 10, 50, 100, 125. Labels keep the nominal key (``k500`` holds the labels of the
head ``fc_500`` whatever the cap) and the caps are recorded in ``done.json`` (``clusters``).

With the method parameter ``pseudo_labels_file`` (an ``.npz`` with one integer array per k, keys
``k2`` ... ``k500``, aligned with the training split) the stage checks and copies that file
instead; its key holds the file's SHA-256, so editing the file makes a new stage.

The artifact is ``<results>/runs/pseudo_labels/<key>/labels.npz``. Every AdvCL-family run on the
same data, preset and seed reuses it (a shared stage: ``--force`` on a method never rebuilds it;
delete its folder to rebuild the labels).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.checkpoints import ENCODER, load_encoder
from benchmark.errors import ConfigError
from benchmark.labels import check_pseudo_labels, load_pseudo_labels, save_pseudo_labels
from benchmark.stage import RunOptions, Stage, StageRun, dataset_for
from benchmark.stages import UPSTREAM, PretrainStage
from methods.advcl import CLUSTERS

LABELS = "labels.npz"
CAP_DIVISOR = 10  # at most n / 10 clusters (at least ~10 images per cluster on average)
KMEANS = {"n_init": 3, "max_iter": 300}


def cluster_counts(n: int) -> dict[int, int]:
    """Nominal k -> clusters actually used for ``n`` images: min(k, max(2, n // 10)), <= n."""
    cap = min(max(2, n // CAP_DIVISOR), n)
    return {k: min(k, cap) for k in CLUSTERS}


def run_kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels (int64) of the rows of ``features``."""
    from sklearn.cluster import KMeans  # heavy, and only this stage needs it

    km = KMeans(n_clusters=k, random_state=seed, **KMEANS)
    return km.fit_predict(features).astype(np.int64)


@torch.no_grad()
def encoder_features(
    encoder_path: Path, images: torch.Tensor, device: torch.device, batch_size: int = 512
) -> np.ndarray:
    """Backbone features of uint8 ``images`` (eval mode, "normal" BN branch), float32 [n, d]."""
    encoder, _ = load_encoder(encoder_path, device)
    encoder.eval()
    out = [
        encoder(images[i : i + batch_size].to(device).float().div_(255), "normal").float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy()


def make_pseudo_labels(features: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """k-means for every k (each distinct cluster count once); returns (labels, info)."""
    counts = cluster_counts(len(features))
    by_count = {c: run_kmeans(features, c, seed) for c in sorted(set(counts.values()))}
    labels = {f"k{k}": by_count[c] for k, c in counts.items()}
    return labels, {"clusters": {f"k{k}": c for k, c in counts.items()}}


def _sha256(path: Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise ConfigError(f"cannot read pseudo-label file {path}: {e.strerror or e}") from None


@dataclass(frozen=True)
class PseudoLabelStage(Stage):
    kind = "pseudo_labels"
    shared = True

    consumer: PretrainStage  # the AdvCL-family pretraining that needs the labels

    @property
    def file(self) -> str | None:
        return self.consumer.params.get("pseudo_labels_file")

    def images(self) -> torch.Tensor:
        c = self.consumer
        data = dataset_for(c.opts, c.dataset, c.preset.image_size)
        return data.pretrain_x[: c.preset.train_limit] if c.preset.train_limit else data.pretrain_x

    def simclr(self) -> PretrainStage:
        c = self.consumer
        return PretrainStage(c.opts, "simclr", {}, c.preset, c.dataset, c.seed)

    def upstream(self) -> dict[str, Stage]:
        return {} if self.file else {"pretrain": self.simclr()}

    def config(self) -> dict[str, Any]:
        c = self.consumer
        if self.file:
            return {"source": "file", "sha256": _sha256(Path(self.file)), "dataset": c.dataset,
                    "train_limit": c.preset.train_limit, "clusters": list(CLUSTERS)}
        return {
            "encoder": "simclr", "dataset": c.dataset, "seed": c.seed, "image_size": c.preset.image_size,
            "train_limit": c.preset.train_limit, "clusters": list(CLUSTERS), "cap_divisor": CAP_DIVISOR,
            "kmeans": KMEANS, "features": "backbone, eval mode, BN branch normal",
        }

    def prepare(self, opts: RunOptions, upstream: dict[str, str]) -> None:
        if self.file:
            load_pseudo_labels(self.file, len(self.images()), CLUSTERS)

    def run(self, run: StageRun) -> dict[str, Any]:
        images = self.images()
        if self.file:
            labels = load_pseudo_labels(self.file, len(images), CLUSTERS)
            save_pseudo_labels(run.dir / LABELS, {f"k{k}": v.numpy() for k, v in labels.items()})
            return {"source": str(self.file), "n_images": len(images)}
        feats = encoder_features(run.upstream_dir("pretrain") / ENCODER, images, run.opts.torch_device())
        labels, info = make_pseudo_labels(feats, self.consumer.seed)
        save_pseudo_labels(run.dir / LABELS, labels)
        return {**info, "n_images": len(images)}

    def outputs(self, opts: RunOptions, key: str) -> dict[str, Any]:
        """What the consumer gets: ``{"pseudo_labels": {k: LongTensor}}``."""
        path = opts.store.dir(self.kind, key) / LABELS
        with np.load(path, allow_pickle=False) as archive:
            raw = {k: archive[k] for k in archive.files}
        return {"pseudo_labels": check_pseudo_labels(raw, len(self.images()), str(path), CLUSTERS)}


UPSTREAM.register("pseudo_labels")(PseudoLabelStage)
