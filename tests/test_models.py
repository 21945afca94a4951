import math

import pytest
import torch

from benchmark.config import PRESETS, get_preset
from benchmark.errors import UnknownName
from benchmark.models import (
    BACKBONES,
    INITS,
    BackboneConfig,
    CheckpointMismatch,
    Classifier,
    ContrastiveModel,
    MLPHead,
    ResNet,
    branch_state_dict,
    classifier_from_encoder,
    init_backbone,
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
    with pytest.raises(UnknownName, match="unknown backbone 'resnet50' \\(did you mean 'resnet18'\\?\\)"):
        BackboneConfig("resnet50")
    with pytest.raises(KeyError):  # UnknownName is a KeyError
        BackboneConfig("resnet18-stl")
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


# ---- the ImageNet stem (STL-10 at 96 px) -------------------------------------------------------


def test_imagenet_stem_at_96px():
    """resnet18-imagenet: Conv2d(3, 64, 7, stride 2, padding 3, no bias), MaxPool2d(3, 2, 1), the
    ResNet-18 stages, adaptive average pool: 96 -> 48 -> 24 -> 24 -> 12 -> 6 -> 3, 512-d."""
    torch.manual_seed(0)
    cfg = BackboneConfig("resnet18-imagenet")
    enc = ResNet(cfg, branches=("normal", "pgd")).eval()
    c = enc.conv1
    assert (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.bias) == (
        3, 64, (7, 7), (2, 2), (3, 3), None,
    )
    pool = enc.maxpool
    assert isinstance(pool, torch.nn.MaxPool2d) and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    sizes = []
    hooks = [mod.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[-2:])))
             for mod in (enc.conv1, enc.maxpool, enc.blocks[1], enc.blocks[3], enc.blocks[5], enc.blocks[7])]
    x = torch.rand(2, 3, 96, 96)
    f = enc(x, "pgd")
    for h in hooks:
        h.remove()
    assert sizes == [(48, 48), (24, 24), (24, 24), (12, 12), (6, 6), (3, 3)]
    assert f.shape == (2, 512) and cfg.feature_dim == 512 == enc.feature_dim
    # the CIFAR backbones keep their stem (no pooling) and state-dict keys; so does the classifier
    assert ResNet(BackboneConfig("resnet18")).maxpool is None
    assert enc.state_dict().keys() == ResNet(BackboneConfig("resnet18"), ("normal", "pgd")).state_dict().keys()
    clf = classifier_from_encoder(enc, "pgd", num_classes=10).eval()
    assert torch.allclose(clf.encoder(x), f, atol=1e-5)


def test_paper_preset_pretrains_stl10_on_the_imagenet_stem():
    paper = get_preset("paper")
    assert paper.backbone_for("stl10") == "resnet18-imagenet"
    assert paper.backbone_for("cifar10") == paper.backbone_for("cifar100") == paper.backbone == "resnet18"
    for preset in PRESETS.values():
        assert all(b in BACKBONES for b in [preset.backbone, *preset.backbones.values()])
        if preset.name != "paper":
            assert preset.backbone_for("stl10") == preset.backbone


# ---- initialisation ----------------------------------------------------------------------------


def test_init_backbone():
    """"kaiming-fan-out": convs N(0, 2 / fan_out), BN 1 / 0; "default": nothing changes, and no
    random number is drawn."""
    assert INITS == ("default", "kaiming-fan-out")
    torch.manual_seed(0)
    enc = ResNet(BackboneConfig("resnet18-imagenet"), branches=("normal",))
    for bn in enc.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(bn.weight)
            torch.nn.init.uniform_(bn.bias)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    state = torch.get_rng_state()
    init_backbone(enc, "default")
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    assert torch.equal(torch.get_rng_state(), state)
    init_backbone(enc, "kaiming-fan-out")
    w = enc.conv1.weight  # 64 x 3 x 7 x 7: fan_out 64 * 49
    assert abs(w.std().item() / math.sqrt(2 / (64 * 49)) - 1) < 5 / math.sqrt(2 * w.numel())
    assert all(not torch.equal(v, before[k]) for k, v in enc.state_dict().items() if k.endswith("conv1.weight"))
    bns = [b for b in enc.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    with pytest.raises(UnknownName, match="unknown init 'kaiming_fan_out'"):
        init_backbone(enc, "kaiming_fan_out")


@pytest.mark.parametrize(("name", "dim"), [("resnet10-small", 128), ("resnet10-wide", 256)])
def test_digit_backbones_at_8px(name, dim):
    """The quick preset's backbones take the digits' native 8x8 (8 -> 4 -> 2 -> 1 px)."""
    cfg = BackboneConfig(name)
    assert cfg.feature_dim == dim
    enc = ResNet(cfg, branches=("normal", "pgd"))
    assert enc(torch.rand(5, 3, 8, 8), "pgd").shape == (5, dim)
    assert Classifier(cfg, 10)(torch.rand(4, 3, 8, 8)).shape == (4, 10)
    quick = get_preset("quick")
    assert BackboneConfig(quick.backbone).name in BACKBONES and quick.image_size == 8


def test_cpu_and_cuda_stages_run_channels_last_with_the_same_function():
    from benchmark.devices import to_layout, uses_channels_last

    assert uses_channels_last(torch.device("cpu")) and uses_channels_last(torch.device("cuda"))
    assert not uses_channels_last(torch.device("meta"))
    torch.manual_seed(0)
    model = Classifier(BackboneConfig("resnet10-tiny"), 10).eval()
    x = torch.rand(16, 3, 16, 16)
    ref = model(x)
    fast = to_layout(model, torch.device("cpu"))
    assert fast.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), ref, rtol=1e-5, atol=1e-5)  # same function, other summation order


def _torchvision_state(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """acbench's plain-BN ResNet-18 state dict in torchvision's names (blocks i -> layer{i//2+1}.{i%2})."""
    out = {}
    for key, value in ours.items():
        if key.startswith("normalize."):
            continue
        key = key.replace(".bn.", ".")
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            rest = rest.replace("shortcut_conv", "downsample.0").replace("shortcut_bn", "downsample.1")
            key = f"layer{int(i) // 2 + 1}.{int(i) % 2}.{rest}"
        out[key] = value
    return out


def test_stem_padding_2_is_solo_learns_cifar_resnet():
    """stem_padding=2 is DeACL's solo-learn ResNet-18: torchvision's resnet18 with conv1 = Conv2d(3,
    64, 3, 1, padding 2, bias False) and maxpool = Identity (solo-learn @f4a3279; DeACL's
    base_for_adversarial_training.py:230-234). Same weights, same features; 32 px -> 34 px after the
    stem. The default (1) leaves the config's dict, hence every checkpoint, as before."""
    import torchvision

    assert BackboneConfig("resnet18").to_dict() == {"name": "resnet18", "in_channels": 3,
                                                    "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    cfg = BackboneConfig("resnet18", stem_padding=2)
    assert cfg.to_dict()["stem_padding"] == 2 and BackboneConfig.from_dict(cfg.to_dict()) == cfg
    assert BackboneConfig.from_dict(BackboneConfig("resnet18").to_dict()).stem_padding == 1
    torch.manual_seed(0)
    ours = ResNet(cfg).eval()
    assert ours.conv1.padding == (2, 2) and ResNet(BackboneConfig("resnet18")).conv1.padding == (1, 1)
    ref = torchvision.models.resnet18(num_classes=10)
    ref.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    ref.maxpool = torch.nn.Identity()
    ref.fc = torch.nn.Identity()
    for m in ours.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ref.load_state_dict(_torchvision_state(ours.state_dict()), strict=True)
    ref.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
        assert ours.conv1(x).shape[-2:] == (34, 34)
        # the same weights in acbench's padding-1 stem (RobustSSL's evaluation ResNet): they load,
        # the features differ
        plain = ResNet(BackboneConfig("resnet18")).eval()
        plain.load_state_dict(ours.state_dict(), strict=True)
        assert not torch.allclose(plain(x), ours(x), atol=1e-3)
    # the classifier of such an encoder keeps its stem
    assert classifier_from_encoder(ResNet(cfg, ("normal",)), "normal", 10).encoder.conv1.padding == (2, 2)
    from benchmark.errors import ConfigError

    with pytest.raises(ConfigError, match="only the CIFAR stem's padding"):
        BackboneConfig("resnet18-imagenet", stem_padding=2)
    with pytest.raises(ConfigError, match="stem_padding -1"):
        BackboneConfig("resnet18", stem_padding=-1)
