"""The ``pseudo_labels`` stage: AdvCL's k-means pseudo-labels, made by acbench itself.

AdvCL's released code clusters the features of an ImageNet-pretrained SimCLR and ships the labels
for CIFAR-10 only. acbench pretrains ``simclr`` on the same data, preset and seed (the pretrain
stage, so the run store shares that encoder), extracts backbone features of ``data.pretrain_x``
(after the preset's ``train_limit``; eval mode, "normal" branch) and runs k-means (scikit-learn,
``n_init=3``, ``random_state=seed``) for each k in :data:`methods.advcl.CLUSTERS`.

Small datasets: k is capped at ``max(2, n // 10)`` clusters for n images (at least ~10 images per
cluster), e.g. 128 smoke images give k = 2, 10, 12, 12, 12; the digits ``quick`` preset's 1,257
images give 2, 10, 50, 100, 125. Labels keep the nominal key (``k500`` holds the labels of the
head ``fc_500`` whatever the cap) and the caps are recorded in ``done.json`` (``clusters``).

The artifact is ``<results>/runs/pseudo_labels/<key>/labels.npz`` (one int64 array per k, keys
``k2``, ``k10``, ...), with key = stage_key(this config, the SimCLR pretrain key). Every AdvCL-family
run on the same data, preset and seed reuses it. ``--force`` on a method re-runs the method's own
stages only; delete this stage's folder to rebuild the labels.
"""

from __future__ import annotations

import dataclasses
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.config import Preset
from benchmark.finetune import load_encoder
from benchmark.io import atomic_write_bytes
from benchmark.pipeline import UPSTREAM, RunOptions, dataset_for, pretrain_stage
from benchmark.pretrain import ENCODER
from benchmark.store import stage_key
from methods.advcl import CLUSTERS, check_pseudo_labels

STAGE = "pseudo_labels"
LABELS = "labels.npz"
CAP_DIVISOR = 10  # at most n / 10 clusters (at least ~10 images per cluster on average)
KMEANS = {"n_init": 3, "max_iter": 300}


def cluster_counts(n: int) -> dict[int, int]:
    """Nominal k -> clusters actually used for ``n`` images: min(k, max(2, n // 10)), <= n."""
    cap = min(max(2, n // CAP_DIVISOR), n)
    return {k: min(k, cap) for k in CLUSTERS}


def run_kmeans(features: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels (int64) of the rows of ``features``."""
    from sklearn.cluster import KMeans

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


def pseudo_label_stage(
    opts: RunOptions, preset: Preset, dataset: str, seed: int
) -> tuple[str, dict[str, Any]]:
    """Make (or reuse) the pseudo-labels; returns (key, {"pseudo_labels": {k: LongTensor}})."""
    opts = dataclasses.replace(opts, force=False)  # --force never rebuilds shared upstream stages
    simclr_key = pretrain_stage(opts, "simclr", {}, preset, dataset, seed)
    data = dataset_for(opts, preset, dataset)
    images = data.pretrain_x[: preset.train_limit] if preset.train_limit else data.pretrain_x
    n = len(images)
    config = {
        "encoder": "simclr", "dataset": dataset, "seed": seed, "image_size": preset.image_size,
        "train_limit": preset.train_limit, "clusters": list(CLUSTERS), "cap_divisor": CAP_DIVISOR,
        "kmeans": KMEANS, "features": "backbone, eval mode, BN branch normal",
    }
    upstream = {"pretrain": simclr_key}
    key = stage_key(STAGE, config, upstream)
    store = opts.store
    if not store.is_done(STAGE, key):
        with store.lock(STAGE, key):
            if not store.is_done(STAGE, key):
                t0 = time.time()
                d = store.begin(STAGE, key, {**config, "upstream": upstream})
                feats = encoder_features(
                    store.dir("pretrain", simclr_key) / ENCODER, images, opts.torch_device()
                )
                labels, info = make_pseudo_labels(feats, seed)
                buf = io.BytesIO()
                np.savez(buf, **labels)
                atomic_write_bytes(d / LABELS, buf.getvalue())
                store.finish(STAGE, key, {**info, "n_images": n, "seconds": time.time() - t0})
    path = store.dir(STAGE, key) / LABELS
    with np.load(path, allow_pickle=False) as archive:
        labels = check_pseudo_labels({k: archive[k] for k in archive.files}, n, str(path))
    return key, {"pseudo_labels": labels}


UPSTREAM[STAGE] = pseudo_label_stage
