"""acbench's pipeline: data, models, pretraining, finetuning, evaluation, run store, CLI.

Public entry point for users of finetuned models::

    from benchmark import load_classifier
    model = load_classifier("results/runs/finetune/<key>/classifier.pt")  # eval mode, [0, 1] -> logits
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_classifier"]


def __getattr__(name: str) -> Any:  # lazy: keeps `import methods` free of the training stack
    if name == "load_classifier":
        from benchmark.finetune import load_classifier

        return load_classifier
    raise AttributeError(name)
