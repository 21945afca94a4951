"""The evaluation form of a classifier (BatchNorms folded into the convolutions) is the same
function as the classifier: logits and input gradients, for every stem, and it is what the
evaluate stage attacks."""

from __future__ import annotations

import pytest
import torch

from benchmark import fold_batchnorm
from benchmark.inference import INFERENCE_FORM, FoldedClassifier, fold_conv_bn
from benchmark.models import BackboneConfig, Classifier


def _classifier(name: str, seed: int = 0) -> Classifier:
    """A classifier with non-trivial BN statistics and affine parameters (as after finetuning)."""
    torch.manual_seed(seed)
    model = Classifier(BackboneConfig(name, 3, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), 10)
    torch.nn.init.normal_(model.fc.weight)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model.double().eval()


@pytest.mark.parametrize("name,size", [("resnet10-tiny", 8), ("resnet18-small", 16),
                                       ("resnet18-imagenet", 32)])
def test_folded_classifier_is_the_same_function(name, size):
    model = _classifier(name)
    folded = fold_batchnorm(model)
    assert isinstance(folded, FoldedClassifier)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(6, 3, size, size, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = model(xa), folded(xb)
    assert out_a.abs().max() > 1e-3  # a real signal, not zeros
    torch.testing.assert_close(out_b, out_a, rtol=1e-10, atol=1e-10)
    (out_a * torch.arange(10.0, dtype=torch.float64)).sum().backward()
    (out_b * torch.arange(10.0, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-12)


def test_folding_needs_no_weight_gradients_and_ignores_mode():
    model = _classifier("resnet10-tiny")
    folded = fold_batchnorm(model)
    assert not any(p.requires_grad for p in folded.parameters())
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    ref = folded(x)
    folded.train()  # no BatchNorm left: train mode computes the same
    torch.testing.assert_close(folded(x), ref, rtol=0, atol=0)


def test_fold_conv_bn_refuses_a_norm_without_running_statistics():
    conv = torch.nn.Conv2d(3, 4, 3)
    with pytest.raises(TypeError, match="running statistics"):
        fold_conv_bn(conv, torch.nn.BatchNorm2d(4, track_running_stats=False))


def test_the_evaluate_stage_attacks_the_folded_form(tmp_path, monkeypatch):
    """The stage's config names the form (so it is in the key), and its model is folded."""
    import benchmark.stages as stages
    from benchmark.pipeline import Target
    from benchmark.stage import RunOptions

    opts = RunOptions(results=tmp_path, progress=False)
    stage = Target("simclr", preset="smoke").evaluate(opts, "slf")
    assert stage.config()["inference"] == INFERENCE_FORM
    seen = []

    def spy(model, *args, **kwargs):
        seen.append(model)
        return {"metrics": {}, "warnings": [], "flags": [], "attacks": {}, "seconds": 0.0}

    monkeypatch.setattr(stages, "evaluate_classifier", spy)
    classifier = _classifier("resnet10-tiny").float()
    monkeypatch.setattr(stages, "load_classifier", lambda path, device=None: classifier)

    class Run:
        pass

    run = Run()
    run.opts, run.upstream_dir = opts, lambda role: tmp_path
    stage.run(run)
    assert len(seen) == 1 and isinstance(seen[0], FoldedClassifier)
