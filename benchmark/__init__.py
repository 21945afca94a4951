"""acbench's pipeline: data, models, pretraining, finetuning, evaluation, run store, CLI.

Public entry point for users of finetuned models::

    from benchmark import load_classifier
    model = load_classifier("results/runs/finetune/<key>/classifier.pt")  # eval mode, [0, 1] -> logits
"""

from __future__ import annotations

from benchmark.checkpoints import load_classifier

__all__ = ["load_classifier"]
