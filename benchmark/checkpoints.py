"""Opening the pipeline's model files: pretrained encoders and finetuned classifiers.

Both load with strict key matching: a missing or unexpected tensor is an error, never a silently
re-initialised layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmark.io import load_checkpoint
from benchmark.models import BackboneConfig, Classifier, ResNet, load_strict

ENCODER = "encoder.pt"
CLASSIFIER = "classifier.pt"


def load_encoder(path: Path, device: torch.device | str = "cpu") -> tuple[ResNet, dict[str, Any]]:
    """The branch-BN encoder of a pretraining checkpoint (and the checkpoint's payload)."""
    ck = load_checkpoint(path, kind="encoder", map_location=device)
    encoder = ResNet(BackboneConfig.from_dict(ck["backbone"]), branches=ck["branches"])
    state = {k[len("encoder.") :]: v for k, v in ck["state_dict"].items() if k.startswith("encoder.")}
    load_strict(encoder, state, f"encoder weights in {path}")
    return encoder.to(device), ck


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """A finetuned classifier in eval mode: [0, 1] images (N, C, H, W) -> logits.

    ``path`` is a ``classifier.pt`` (a record's ``checkpoint``, relative to the results folder).
    Normalisation is inside the model, so any attack library can use it directly.
    """
    ck = load_checkpoint(Path(path), kind="classifier", map_location=device)
    model = Classifier(BackboneConfig.from_dict(ck["backbone"]), int(ck["num_classes"]))
    load_strict(model, ck["state_dict"], f"classifier weights in {path}")
    return model.to(device).eval()
