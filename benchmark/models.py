"""ResNets with named BatchNorm branches, projection heads, and the finetuned classifier.

The pretraining encoder keeps one BatchNorm per *branch* in every BN layer (ACL's dual BN:
"normal" for clean views, "pgd" for adversarial ones; AdvCL adds "pgd_ce"). The branch is chosen
per forward call. Finetuning converts one branch into a plain single-BN network loaded with strict
key matching, so a checkpoint that does not fit the architecture can never be loaded silently.
Input normalisation lives inside the model: every model takes images in [0, 1].

Backbones have the CIFAR stem (3x3 stride-1 convolution, no max-pool) except ``resnet18-imagenet``,
whose ImageNet stem (7x7 stride-2 convolution, 3x3 stride-2 max-pool) is what the STL-10 releases
(RobustSSL, DynACL, AIR) train at 96 px; its weights are random like every other backbone's.
:func:`init_backbone` applies a method's weight initialisation (``Params.init``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from benchmark.errors import AcbenchError, ConfigError, check_choice, unknown


@dataclass(frozen=True)
class Architecture:
    """A backbone's shape: BasicBlocks per stage, width of the first stage, and stem.

    ``stem="cifar"``: 3x3 stride-1 convolution, no max-pool (32 px images keep their resolution;
    ``BackboneConfig.stem_padding`` 2 is DeACL's solo-learn stem, 32 -> 34 px).
    ``stem="imagenet"``: 7x7 stride-2 convolution (padding 3) then 3x3 stride-2 max-pool (padding
    1), the torchvision ResNet stem, which the STL-10 releases use at 96 px (96 -> 48 -> 24).
    """

    blocks: tuple[int, int, int, int]
    width: int
    stem: str = "cifar"


BACKBONES: dict[str, Architecture] = {
    "resnet18": Architecture((2, 2, 2, 2), 64),  # the paper backbone (512-d features)
    "resnet18-imagenet": Architecture((2, 2, 2, 2), 64, stem="imagenet"),  # the paper's STL-10 backbone
    "resnet18-small": Architecture((2, 2, 2, 2), 16),  # ResNet-18 at quarter width (128-d): CPU presets
    # the smoke and quick presets (64-d); quick at the digits' native 8x8: one block per stage,
    # 8 -> 4 -> 2 -> 1 px. AutoAttack on it costs half of what it costs on resnet10-small (docs/design.md)
    "resnet10-tiny": Architecture((1, 1, 1, 1), 8),
    "resnet10-small": Architecture((1, 1, 1, 1), 16),  # 128-d
    "resnet10-wide": Architecture((1, 1, 1, 1), 32),  # 256-d
}

# Weight initialisations of a pretraining backbone (a method's ``Params.init``): "default" keeps
# PyTorch's (RoCL's release, SimCLR); "kaiming-fan-out" is the ACL and AdvCL releases'.
INITS = ("default", "kaiming-fan-out")


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to rebuild an encoder: stored in every checkpoint."""

    name: str = "resnet18"
    in_channels: int = 3
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    # the CIFAR stem's 3x3 convolution padding: 1 keeps the resolution; DeACL's solo-learn ResNet
    # (vturrisi/solo-learn @f4a3279, and pantheon5100/DeACL) uses 2 (32 -> 34 px)
    stem_padding: int = 1

    def __post_init__(self) -> None:
        if self.name not in BACKBONES:
            raise unknown("backbone", self.name, sorted(BACKBONES))
        if self.stem_padding != 1 and (BACKBONES[self.name].stem != "cifar" or self.stem_padding < 0):
            raise ConfigError(f"stem_padding {self.stem_padding}: only the CIFAR stem's padding can change "
                              f"(to 0 or more); {self.name} has the {BACKBONES[self.name].stem} stem")

    @property
    def feature_dim(self) -> int:
        return BACKBONES[self.name].width * 8

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.stem_padding == 1:  # the default is left out: checkpoints of every other backbone unchanged
            del d["stem_padding"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BackboneConfig:
        return cls(
            name=d["name"],
            in_channels=int(d["in_channels"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            stem_padding=int(d.get("stem_padding", 1)),
        )


class BranchBatchNorm(nn.Module):
    """One BatchNorm per named branch; ``forward(x, branch)`` picks which one normalises x."""

    def __init__(self, num_features: int, branches: Sequence[str], dim: int = 2):
        super().__init__()
        bn = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        self.branches = tuple(branches)
        self.bn = nn.ModuleDict({b: bn(num_features) for b in self.branches})

    def forward(self, x: torch.Tensor, branch: str | None = None) -> torch.Tensor:
        if branch is None:
            if len(self.branches) != 1:
                raise ValueError(f"this model has BN branches {self.branches}; name one")
            branch = self.branches[0]
        try:
            return self.bn[branch](x)
        except KeyError:
            raise ValueError(f"unknown BN branch {branch!r}; this model has {self.branches}") from None


class PlainBatchNorm(nn.Module):
    """Single BatchNorm with the branch-aware call signature (the finetuned classifier's BN)."""

    def __init__(self, num_features: int, dim: int = 2):
        super().__init__()
        bn = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        self.bn = bn(num_features)

    def forward(self, x: torch.Tensor, branch: str | None = None) -> torch.Tensor:
        return self.bn(x)


def make_norm(num_features: int, branches: Sequence[str] | None, dim: int = 2) -> nn.Module:
    if branches is None:
        return PlainBatchNorm(num_features, dim)
    return BranchBatchNorm(num_features, branches, dim)


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, branches: Sequence[str] | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = make_norm(cout, branches)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = make_norm(cout, branches)
        self.has_shortcut = stride != 1 or cin != cout
        if self.has_shortcut:
            self.shortcut_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.shortcut_bn = make_norm(cout, branches)

    def forward(self, x: torch.Tensor, branch: str | None) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x), branch))
        out = self.bn2(self.conv2(out), branch)
        short = self.shortcut_bn(self.shortcut_conv(x), branch) if self.has_shortcut else x
        return F.relu(out + short)


class ResNet(nn.Module):
    """ResNet of post-activation BasicBlocks returning globally average-pooled features; the stem
    is the CIFAR or the ImageNet one (:class:`Architecture`).

    ``branches=None`` gives plain BatchNorm (a classifier encoder); a tuple of names gives
    branch-selectable BatchNorm in every BN layer (pretraining encoders).
    """

    def __init__(self, config: BackboneConfig, branches: Sequence[str] | None = None):
        super().__init__()
        arch = BACKBONES[config.name]
        blocks, width = arch.blocks, arch.width
        self.config = config
        self.branches = tuple(branches) if branches is not None else None
        self.normalize = Normalize(config.mean, config.std)
        if arch.stem == "imagenet":
            self.conv1 = nn.Conv2d(config.in_channels, width, 7, 2, 3, bias=False)
            self.maxpool: nn.Module | None = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(config.in_channels, width, 3, 1, config.stem_padding, bias=False)
            self.maxpool = None
        self.bn1 = make_norm(width, branches)
        layers: list[nn.Module] = []
        cin = width
        for stage, n in enumerate(blocks):
            cout = width * 2**stage
            for i in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1, branches))
                cin = cout
        self.blocks = nn.ModuleList(layers)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor, branch: str | None = None) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x)), branch))
        if self.maxpool is not None:
            out = self.maxpool(out)
        for block in self.blocks:
            out = block(out, branch)
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


def init_backbone(encoder: nn.Module, init: str) -> None:
    """Re-initialise ``encoder``'s weights in place with the scheme ``init`` (one of :data:`INITS`).

    "default" leaves PyTorch's initialisation (and the random stream) alone. "kaiming-fan-out" is
    the ACL and AdvCL releases' ResNet initialisation: every ``Conv2d`` weight is drawn from
    N(0, 2 / fan_out) (``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, fan_out = out
    channels x kernel area) and every BatchNorm2d gets weight 1 and bias 0 (PyTorch's default
    too); Linear layers and the heads keep PyTorch's initialisation, as released.
    """
    check_choice("init", init, INITS)
    if init == "default":
        return
    for m in encoder.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MLPHead(nn.Module):
    """Projection head: Linear layers with optional (branch-aware) BatchNorm1d and ReLU between.

    ``dims`` = [in, hidden..., out]. ``bn`` adds BN after every Linear (``bn_last`` also after
    the last one), ``branches`` makes those BNs branch-selectable (ACL's dual-BN head).
    """

    def __init__(
        self,
        dims: Sequence[int],
        bn: bool = False,
        bn_last: bool = False,
        branches: Sequence[str] | None = None,
        bias: bool = True,
    ):
        super().__init__()
        self.linears = nn.ModuleList(
            nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:])
        )
        n = len(self.linears)
        self.norms = nn.ModuleList(
            make_norm(d, branches, dim=1) if bn and (i < n - 1 or bn_last) else nn.Identity()
            for i, d in enumerate(dims[1:])
        )

    def forward(self, h: torch.Tensor, branch: str | None = None) -> torch.Tensor:
        n = len(self.linears)
        for i, (lin, norm) in enumerate(zip(self.linears, self.norms)):
            h = lin(h)
            if not isinstance(norm, nn.Identity):
                h = norm(h, branch)
            if i < n - 1:
                h = F.relu(h)
        return h


class NoHead(nn.Module):
    """No projector: the features themselves (called like a head, with a BN branch it ignores)."""

    def forward(self, h: torch.Tensor, branch: str | None = None) -> torch.Tensor:
        return h


class ContrastiveModel(nn.Module):
    """A pretraining model: branch-BN encoder + projection head (+ optional extra heads)."""

    def __init__(self, encoder: ResNet, head: nn.Module, extra_heads: nn.ModuleDict | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.extra_heads = extra_heads if extra_heads is not None else nn.ModuleDict()

    def features(self, x: torch.Tensor, branch: str | None = None) -> torch.Tensor:
        return self.encoder(x, branch)

    def forward(self, x: torch.Tensor, branch: str | None = None) -> torch.Tensor:
        """L2-normalised projection of images ``x`` through BN branch ``branch``."""
        return F.normalize(self.head(self.encoder(x, branch), branch), dim=-1)


class Classifier(nn.Module):
    """Plain single-BN encoder + linear layer: maps [0, 1] images to logits."""

    def __init__(self, config: BackboneConfig, num_classes: int):
        super().__init__()
        self.encoder = ResNet(config, branches=None)
        self.fc = nn.Linear(self.encoder.feature_dim, num_classes)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))


class CheckpointMismatch(AcbenchError, ValueError):
    """Raised when weights do not fit the model they are loaded into."""


def branch_state_dict(encoder_state: dict[str, torch.Tensor], branch: str) -> dict[str, torch.Tensor]:
    """Keep BN branch ``branch`` of a branch-BN encoder state dict, renamed for a plain-BN encoder.

    ``blocks.0.bn1.bn.pgd.weight`` becomes ``blocks.0.bn1.bn.weight``; other branches are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    found = False
    for key, value in encoder_state.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-3] == "bn":  # ... <layer>.bn.<branch>.<param>
            if parts[-2] != branch:
                continue
            found = True
            key = ".".join(parts[:-2] + parts[-1:])
        out[key] = value
    if not found:
        raise CheckpointMismatch(f"the encoder has no BN branch named {branch!r}")
    return out


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a message naming the first mismatching keys/shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
    if problems:
        raise CheckpointMismatch(f"{what} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def classifier_from_encoder(
    encoder: ResNet, branch: str, num_classes: int
) -> Classifier:
    """The finetuning starting point: encoder BN branch ``branch`` as a plain classifier."""
    clf = Classifier(encoder.config, num_classes)
    load_strict(clf.encoder, branch_state_dict(encoder.state_dict(), branch), "encoder branch")
    return clf
