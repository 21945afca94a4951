"""acbench's pipeline: data, models, pretraining, finetuning, evaluation, run store, CLI.

Public entry point for users of finetuned models::

    from benchmark import fold_batchnorm, load_classifier
    model = load_classifier("results/runs/finetune/<key>/classifier.pt")  # eval mode, [0, 1] -> logits
    evaluated = fold_batchnorm(model)  # what the evaluate stage attacks: the same function, BN folded
"""

from __future__ import annotations

from benchmark.checkpoints import load_classifier
from benchmark.inference import fold_batchnorm

__all__ = ["fold_batchnorm", "load_classifier"]
