import pytest
import torch

from benchmark.models import (
    BackboneConfig,
    CheckpointMismatch,
    Classifier,
    ContrastiveModel,
    MLPHead,
    ResNet,
    branch_state_dict,
    classifier_from_encoder,
    load_strict,
)


def _trained_bn(encoder: ResNet, branch: str) -> None:
    """Give a branch distinct running statistics and affine params."""
    encoder.train()
    for _ in range(3):
        encoder(torch.rand(8, 3, 16, 16) * 0.5 + 0.3 * (branch == "pgd"), branch)
    for name, p in encoder.named_parameters():
        if f".bn.{branch}." in name:
            p.data.uniform_(0.5, 1.5)


@pytest.mark.parametrize("backbone", ["resnet10-tiny", "resnet18-small"])
def test_branch_conversion_matches_branch_forward(backbone):
    torch.manual_seed(0)
    cfg = BackboneConfig(backbone, 3, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    enc = ResNet(cfg, branches=("normal", "pgd"))
    _trained_bn(enc, "normal")
    _trained_bn(enc, "pgd")
    enc.eval()
    clf = classifier_from_encoder(enc, "pgd", num_classes=10).eval()
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(clf.encoder(x), enc(x, "pgd"), atol=1e-6)
    assert not torch.allclose(clf.encoder(x), enc(x, "normal"), atol=1e-4)
    # zero-initialised linear layer
    assert torch.count_nonzero(clf.fc.weight) == 0 and torch.count_nonzero(clf(x)) == 0


def test_branch_state_dict_unknown_branch():
    enc = ResNet(BackboneConfig("resnet10-tiny"), branches=("normal", "pgd"))
    with pytest.raises(CheckpointMismatch, match="pgd_ce"):
        branch_state_dict(enc.state_dict(), "pgd_ce")


def test_load_strict_names_mismatches():
    small = Classifier(BackboneConfig("resnet18-small"), 10)
    tiny = Classifier(BackboneConfig("resnet10-tiny"), 10)
    with pytest.raises(CheckpointMismatch, match="missing keys|shape mismatches"):
        load_strict(small, tiny.state_dict())
    other_classes = Classifier(BackboneConfig("resnet10-tiny"), 100)
    with pytest.raises(CheckpointMismatch, match=r"fc.weight: \(100, 64\) vs model \(10, 64\)"):
        load_strict(tiny, other_classes.state_dict())


def test_unknown_branch_and_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        BackboneConfig("resnet50")
    enc = ResNet(BackboneConfig("resnet10-tiny"), branches=("normal", "pgd"))
    with pytest.raises(ValueError, match="unknown BN branch"):
        enc(torch.rand(2, 3, 16, 16), "pgd_ce")


def test_normalisation_inside_and_dual_bn_head():
    cfg = BackboneConfig("resnet10-tiny", 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    enc = ResNet(cfg, branches=("normal", "pgd"))
    head = MLPHead([64, 64, 64, 64], bn=True, bn_last=True, branches=("normal", "pgd"))
    model = ContrastiveModel(enc, head)
    z = model(torch.rand(6, 3, 16, 16), "pgd")
    assert z.shape == (6, 64)
    assert torch.allclose(z.norm(dim=1), torch.ones(6), atol=1e-5)
    assert sum(1 for n, _ in head.named_parameters() if ".bn.pgd." in n) == 6  # 3 BNs x (weight, bias)
    assert torch.allclose(enc.normalize(torch.full((1, 3, 2, 2), 0.75)), torch.ones(1, 3, 2, 2))
