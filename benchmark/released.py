"""Reading the pretrained encoders released with the original papers' code, and AdvCL's pseudo-labels.

A format (:data:`FORMATS`, each naming the repository file that saves it) is one release's way of
saving a model: container key, (Distributed)DataParallel's ``module.`` prefix, key layout (ACL
family: dual BN ``bn_list.0/1`` = normal/pgd, ImageNet mean/std buffers, 3-layer BN projector
``fc.*``; AdvCL family: triple BN normal/pgd/pgd_ce, ``head_proj``, pseudo-label heads
``fc_002..fc_500``; RoCL: single BN, projector in ``<file>_projector``; DynACL's momentum wrapper:
``encoder_k``). :func:`read_released` maps every tensor onto acbench's ResNet (and heads where
acbench's have the same structure) or raises :class:`ReleaseError` naming what is missing, left
over, misshapen, or which format the file has instead. Tensors are dropped only where the release's
own finetuning drops them too, each such group listed with its reason in the provenance. Files load
with ``torch.load(weights_only=True)`` (numpy scalars/arrays, ``argparse.Namespace`` allowed as
data): a pickle that would run code is refused. Each release's input preprocessing becomes
``BackboneConfig.mean``/``std``: the ACL family's buffers (ImageNet); raw [0, 1] input (mean 0,
std 1) for RoCL and AdvCL. RoCL pools with ``avg_pool2d(out, 4)``, the global pool at 32 px.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from benchmark.errors import ConfigError, check_choice
from benchmark.models import BACKBONES, BackboneConfig, ResNet

_np_multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 / 1


class ReleaseError(ConfigError):
    """A released checkpoint or label file that cannot be imported; the message names the problem."""


ACL_BRANCHES = ("normal", "pgd")  # ACL train_simCLR.py:60-63 (DynACL, AIR: the same)
ADVCL_BRANCHES = ("normal", "pgd", "pgd_ce")  # AdvCL pretraining_advCL.py:208
ADVCL_CLUSTERS = (2, 10, 50, 100, 500)  # AdvCL pretraining_advCL.py:126
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

_CLASSIFIER_FC = ("the pseudo-label classifier of DynACL++ (LPAFT_AFF.py:91) / DynACL-AIR++ (LP-AFF.py:95); "
                  "the releases' finetuning deletes every 'fc' key (cvt_state_dict)")
_ADVCL_UNUSED = ("not in AdvCL's loss (pretraining_advCL.py:256-270 uses head_proj and fc_*); its SLF "
                 "loads with strict=False and classifies backbone features (finetuning_advCL_SLF.py:153)")
_QUERY_ENCODER = ("DynACL's query encoder: the release evaluates encoder_k, which it saves alone as "
                  "model_encoder_k.pt (train_DynACL.py:235-238)")


class Format(NamedTuple):
    """A release's checkpoint format: accepted key layouts, container keys tried in order (then a
    bare state dict), and the repository file that saves it."""

    name: str
    layouts: tuple[str, ...]
    containers: tuple[str, ...]
    source: str


_ZOO = ("state_dict_dual", "state_dict", "model")  # RobustSSL / AIR finetuning's order
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("acl", ("acl",), ("state_dict",), "VITA-Group/Adversarial-Contrastive-Learning train_simCLR.py:175-195"),
    Format("rocl", ("rocl",), ("model",), "Kim-Minseon/RoCL src/utils.py:166-182 (rocl_train.py:185)"),
    Format("advcl", ("advcl",), ("model", "state_dict"), "LijieFan/AdvCL pretraining_advCL.py:289-299"),
    Format("a-infonce", ("advcl",), ("model", "state_dict"), "yqy2001/A-InfoNCE Asym-AdvCL/pretraining_advCL.py:372-380"),
    Format("a-infonce-rocl", ("rocl",), ("model",), "yqy2001/A-InfoNCE Asym-RoCL/utils.py:166-182"),
    Format("dynacl", ("acl", "momentum"), ("state_dict",), "PKU-ML/DYNACL train_DynACL.py:229-238"),
    Format("air", ("acl",), _ZOO, "GodXuxilie/Enhancing_ACL_via_AIR pretraining.py:294-305"),
    Format("robustssl", ("acl", "advcl"), _ZOO, "GodXuxilie/RobustSSL_Benchmark zoo (Vanilla_Finetuning/utils.py:511-520)"),
)}

_LAYOUTS = {
    "acl": "a dual-BN ACL-family checkpoint (bn_list, normalize buffers, 'fc' head)",
    "advcl": "a triple-BN AdvCL-family checkpoint (bn_list, head_proj, fc_002..fc_500)",
    "rocl": "a single-BN RoCL-style checkpoint (bn1.weight, shortcut.0/1)",
    "momentum": "DynACL's momentum wrapper (encoder_q./encoder_k.)",
    "rocl-projector": "RoCL's projector file (linear_1, linear_2)",
}
_FORMATS_OF = {lay: [f.name for f in FORMATS.values() if lay in f.layouts] for lay in _LAYOUTS}

_NP = (_np_multiarray.scalar, _np_multiarray._reconstruct)
_SAFE_GLOBALS: list[Any] = [argparse.Namespace, np.ndarray, np.dtype, *_NP, *((f, f"numpy.core.multiarray.{f.__name__}") for f in _NP),
                            *{type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG"}]


@dataclass(frozen=True)
class Imported:
    """A release mapped onto acbench: what ``encoder.pt`` stores, plus provenance. ``state_dict``
    has ``ContrastiveModel`` names: ``encoder.*``, and ``head.*`` / ``extra_heads.*`` if mapped."""

    method: str
    format: str
    backbone: dict[str, Any]
    branches: tuple[str, ...]
    finetune_branch: str
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any] = field(default_factory=dict)

    def encoder_payload(self, method_params: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
        """The payload of ``save_checkpoint(dir / ENCODER, "encoder", ...)``: what ``run_pretrain``
        saves plus ``provenance``; :func:`benchmark.checkpoints.load_encoder` reads it."""
        return {"method": self.method, "method_params": dict(method_params), "backbone": dict(self.backbone),
                "branches": list(self.branches), "finetune_branch": self.finetune_branch,
                "config": dict(config), "state_dict": dict(self.state_dict), "provenance": self.provenance}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_release_file(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` on CPU; a one-line :class:`ReleaseError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"{path} does not exist")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if m := re.search(r"GLOBAL (\S+)", str(e)):
            raise ReleaseError(f"refusing to load {path}: it needs {m.group(1)}, which is not plain "
                               "weights (loading it would run code)") from None
        m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))
        detail = m.group(1).strip() if m else _line(e)
        raise ReleaseError(f"{path} is not a plain-weights PyTorch checkpoint ({detail})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:
        raise ReleaseError(f"{path} is not a readable PyTorch checkpoint ({_line(e)})") from None


def _line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:120]


def _first(items: Sequence[str], n: int = 3) -> str:
    return f"{len(items)} (first: {', '.join(items[:n])})"


def _unwrap(obj: Any, fmt: Format, where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict in ``obj`` (container key, ``module.`` prefix) and how it was found."""
    if not isinstance(obj, dict):
        raise ReleaseError(f"{where} holds a {type(obj).__name__}, not a checkpoint dict")
    if "format_version" in obj and "kind" in obj:
        raise ReleaseError(f"{where} is an acbench {obj['kind']!r} checkpoint, not a released one")
    container = next((k for k in fmt.containers if isinstance(obj.get(k), dict)), "")
    sd = obj[container] if container else obj
    if not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ReleaseError(f"{where}: no state dict found for format {fmt.name!r} (tried "
                           f"{', '.join(map(repr, fmt.containers))}, then the file itself; top-level "
                           f"keys: {', '.join(map(str, list(obj)[:8]))})")
    prefix = "module." if all(k.startswith("module.") for k in sd) else ""
    if not prefix and any(k.startswith("module.") for k in sd):
        raise ReleaseError(f"{where}: only some keys carry the 'module.' prefix")
    sd = {k[len(prefix):]: v for k, v in sd.items()}
    other = sorted(str(k) for k in obj if k != container) if container else []
    return sd, {"container": container or None, "prefix": prefix or None, "other_entries": other}


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Which release layout (a key of ``_LAYOUTS``) a state dict has, or None."""
    if any(k.startswith("encoder_k.") for k in sd):
        return "momentum"
    if "bn1.bn_list.0.weight" in sd:
        if "head_proj.0.weight" in sd or any(k.startswith("fc_0") for k in sd):
            return "advcl"
        return "acl" if "normalize.mean" in sd else None
    if "bn1.weight" in sd and "conv1.weight" in sd:
        return "rocl"
    return "rocl-projector" if "linear_1.weight" in sd and "linear_2.weight" in sd else None


def _check_layout(sd: Mapping[str, torch.Tensor], fmt: Format, where: str) -> str:
    layout = detect_layout(sd)
    if layout in fmt.layouts:
        return layout
    if layout is None:
        raise ReleaseError(f"{where} has no layout acbench knows (keys: {', '.join(list(sd)[:4])}, ...); "
                           f"format {fmt.name!r} expects {' or '.join(_LAYOUTS[x] for x in fmt.layouts)}")
    hint = ("; import the encoder file and pass this one as the projector" if layout == "rocl-projector"
            else f" (try --format {' or '.join(_FORMATS_OF[layout])})")
    raise ReleaseError(f"{where} is {_LAYOUTS[layout]}, not format {fmt.name!r}{hint}")


def _architecture(sd: Mapping[str, torch.Tensor], where: str) -> tuple[str, int]:
    """acbench's backbone name for the release's ResNet (stem, width, blocks per stage)."""
    w = sd.get("conv1.weight")
    if w is None or w.dim() != 4:
        raise ReleaseError(f"{where} has no 4-D conv1.weight: not a ResNet encoder")
    stem = {3: "cifar", 7: "imagenet"}.get(int(w.shape[-1]))
    blocks = [1 + max((int(m.group(1)) for k in sd if (m := re.match(rf"layer{s}\.(\d+)\.", k))), default=-1)
              for s in range(1, 5)]
    for name, a in BACKBONES.items():
        if (a.stem, a.width, tuple(a.blocks)) == (stem, int(w.shape[0]), tuple(blocks)):
            return name, int(w.shape[1])
    raise ReleaseError(f"{where}: a ResNet with {tuple(blocks)} blocks per stage, width {int(w.shape[0])} and "
                       f"a {int(w.shape[-1])}-px stem kernel, which no acbench backbone has ({', '.join(BACKBONES)})")


def _bn_branches(sd: Mapping[str, torch.Tensor], layout: str, where: str) -> tuple[str, ...]:
    if layout == "rocl":
        return ("normal",)
    want = ADVCL_BRANCHES if layout == "advcl" else ACL_BRANCHES
    found = sorted({int(m.group(1)) for k in sd if (m := re.match(r"bn1\.bn_list\.(\d+)\.", k))})
    if found != list(range(len(want))):
        raise ReleaseError(f"{where} has BN branches bn_list.{found} per layer; this release has "
                           f"{len(want)} ({', '.join(want)})")
    return want


def _source_key(key: str, layout: str, arch_blocks: Sequence[int]) -> str:
    """The release's name for acbench encoder tensor ``key`` (``normalize.*`` excluded)."""
    parts, prefix = key.split("."), ""
    if parts[0] == "blocks":  # blocks.<j> -> layer<s>.<b>
        j, s = int(parts[1]), 0
        while j >= arch_blocks[s]:
            j, s = j - arch_blocks[s], s + 1
        prefix, parts = f"layer{s + 1}.{j}.", parts[2:]
    single = layout == "rocl"
    module = {"shortcut_conv": "shortcut.0" if single else "downsample.conv",
              "shortcut_bn": "shortcut.1" if single else "downsample.bn"}.get(parts[0], parts[0])
    if len(parts) == 4 and parts[1] == "bn":  # <module>.bn.<branch>.<param>
        bn = "" if single else f".bn_list.{(ADVCL_BRANCHES if layout == 'advcl' else ACL_BRANCHES).index(parts[2])}"
        return f"{prefix}{module}{bn}.{parts[3]}"
    return f"{prefix}{module}.{parts[-1]}"


class _Mapper:
    """Target tensors, consumed source keys, fills and ignored groups of one file."""

    def __init__(self, sd: Mapping[str, torch.Tensor], where: str):
        self.sd, self.where, self.out, self.used = sd, where, {}, set()
        self.missing: list[str] = []
        self.shapes: list[str] = []
        self.filled, self.ignored = {}, {}

    def take(self, target: str, source: str, shape: Sequence[int] | None = None) -> None:
        v = self.sd.get(source)
        if v is None and source.endswith("num_batches_tracked"):  # absent from old files; eval ignores it
            self.out[target], self.filled[target] = torch.tensor(0), "not in the file (BN step counter): 0"
        elif v is None:
            self.missing.append(source)
        else:
            self.used.add(source)
            if shape is not None and tuple(v.shape) != tuple(shape):
                self.shapes.append(f"{source} {tuple(v.shape)} vs {tuple(shape)}")
            self.out[target] = v.detach().clone()

    def linear(self, target: str, source: str, zero_bias: bool = False) -> None:
        self.take(f"{target}.weight", f"{source}.weight")
        if zero_bias and f"{source}.bias" not in self.sd:  # ACL's fc2/fc3: bias=False is a zero bias
            self.out[f"{target}.bias"] = torch.zeros(self.sd[f"{source}.weight"].shape[0])
            self.filled[f"{target}.bias"] = f"{source} has no bias (bias=False): zeros, the same layer"
        else:
            self.take(f"{target}.bias", f"{source}.bias")

    def ignore(self, prefix: str, reason: str) -> None:
        if keys := [k for k in self.sd if k.startswith(prefix)]:
            self.used.update(keys)
            self.ignored[f"{prefix}*"] = f"{len(keys)} tensors: {reason}"

    def finish(self) -> None:
        left = [k for k in self.sd if k not in self.used]
        problems = [f"{what} {_first(keys, n)}" for what, keys, n in
                    (("missing", self.missing, 3), ("left over", left, 3), ("wrong shapes", self.shapes, 2)) if keys]
        if problems:
            raise ReleaseError(f"{self.where} does not map onto acbench's encoder: " + "; ".join(problems))


def _map_heads(m: _Mapper, layout: str, branches: tuple[str, ...]) -> None:
    """Heads in acbench's names (MLPHead ``head``, ``extra_heads.fc<h>``) where they fit."""
    if layout == "acl":
        if sorted(k for k in m.sd if k.startswith("fc.")) == ["fc.bias", "fc.weight"]:
            m.ignore("fc.", _CLASSIFIER_FC)
        i = 1
        while f"fc.fc{i}.weight" in m.sd:  # proj_head, models/resnet_multi_bn.py:181-216
            m.linear(f"head.linears.{i - 1}", f"fc.fc{i}", zero_bias=True)
            for j, b in enumerate(branches):
                for p in _BN:
                    m.take(f"head.norms.{i - 1}.bn.{b}.{p}", f"fc.bn{i}.bn_list.{j}.{p}")
            i += 1
    elif layout == "advcl":  # models/resnet_cifar_multibn_ensembleFC.py:258-286
        if "head_proj.0.weight" in m.sd:
            m.linear("head.linears.0", "head_proj.0")
            for p in _BN:
                m.take(f"head.norms.0.bn.{p}", f"head_proj.1.{p}")
            m.linear("head.linears.1", "head_proj.3")
        for k in [k for k in m.sd if re.fullmatch(r"fc_\d+\.weight", k)]:
            m.linear(f"extra_heads.fc{int(k[3:-7])}", k[:-7])
        m.ignore("head_pred.", _ADVCL_UNUSED)
        m.ignore("head_ce.", _ADVCL_UNUSED)


def _map_encoder(sd: Mapping[str, torch.Tensor], layout: str, where: str) -> tuple[_Mapper, BackboneConfig, tuple[str, ...]]:
    name, channels = _architecture(sd, where)
    branches = _bn_branches(sd, layout, where)
    m = _Mapper(sd, where)
    stats = {"mean": (0.0,) * channels, "std": (1.0,) * channels}  # RoCL, AdvCL: raw [0, 1] input
    if layout == "acl":  # NormalizeByChannelMeanStd buffers (models/resnet_multi_bn.py:232-233)
        for p in stats:
            v = sd.get(f"normalize.{p}")
            if v is None or tuple(v.shape) != (channels,):
                raise ReleaseError(f"{where}: normalize.{p} is {'missing' if v is None else tuple(v.shape)}, expected ({channels},)")
            m.used.add(f"normalize.{p}")
            stats[p] = tuple(float(x) for x in v.tolist())
    config = BackboneConfig(name, channels, stats["mean"], stats["std"])
    for key, value in ResNet(config, branches=branches).state_dict().items():
        if key.startswith("normalize."):  # (1, C, 1, 1) from BackboneConfig: the file's numbers
            m.out[f"encoder.{key}"] = value.clone()
        else:
            m.take(f"encoder.{key}", _source_key(key, layout, BACKBONES[name].blocks), value.shape)
    return m, config, branches


def read_released(path: str | Path, fmt: str, method: str, head_path: str | Path | None = None) -> Imported:
    """Map the released checkpoint ``path`` of format ``fmt`` (a key of :data:`FORMATS`) onto
    acbench's encoder for ``method``; ``head_path``: RoCL's separate ``<file>_projector``. Strict:
    every tensor is mapped, or belongs to a group that the release's own finetuning drops
    too (``provenance["ignored"]``), else :class:`ReleaseError`. Nothing is written.
    """
    spec = FORMATS[check_choice("import format", fmt, FORMATS)]
    path = Path(path)
    sd, found = _unwrap(load_release_file(path), spec, str(path))
    layout = _check_layout(sd, spec, str(path))
    provenance: dict[str, Any] = {"format": spec.name, "source": spec.source, "file": path.name,
                                  "sha256": file_sha256(path), "layout": layout, **found}
    ignored: dict[str, str] = {}
    if layout == "momentum":  # DynACL's resnet18_momentum (models/resnet_multi_bn.py:487-529)
        if other := [k for k in sd if not k.startswith(("encoder_q.", "encoder_k."))]:
            raise ReleaseError(f"{path}: momentum wrapper with unexpected keys {_first(other)}")
        ignored["encoder_q.*"] = f"{sum(k.startswith('encoder_q.') for k in sd)} tensors: {_QUERY_ENCODER}"
        sd, layout = {k[10:]: v for k, v in sd.items() if k.startswith("encoder_k.")}, "acl"
        if detect_layout(sd) != "acl":
            raise ReleaseError(f"{path}: encoder_k is not {_LAYOUTS['acl']}")
    m, config, branches = _map_encoder(sd, layout, str(path))
    _map_heads(m, layout, branches)
    m.finish()
    if head_path is not None:
        if layout != "rocl":
            raise ReleaseError(f"a separate projector file belongs to RoCL-style releases, not {spec.name!r}")
        hsd, _ = _unwrap(load_release_file(head_path), FORMATS["rocl"], str(head_path))
        if detect_layout(hsd) != "rocl-projector":
            raise ReleaseError(f"{head_path} is not {_LAYOUTS['rocl-projector']} (models/projector.py)")
        hm = _Mapper(hsd, str(head_path))
        for i in (0, 1):
            hm.linear(f"head.linears.{i}", f"linear_{i + 1}")
        hm.finish()
        m.out.update(hm.out)
        provenance["head_file"] = {"file": Path(head_path).name, "sha256": file_sha256(head_path)}
    provenance["heads"] = sorted({".".join(k.split(".")[: 1 if k.startswith("head.") else 2])
                                  for k in m.out if not k.startswith("encoder.")})
    provenance.update(ignored={**ignored, **m.ignored}, filled=m.filled)
    finetune = "normal" if branches == ("normal",) else "pgd"  # bnNameCnt 1, load_BN_checkpoint: bn_list.1
    return Imported(method, spec.name, config.to_dict(), branches, finetune, m.out, provenance)


def fit_to_model(imported: Imported, model_state: Mapping[str, torch.Tensor], finetune_branch: str | None = None) -> Imported:
    """Check ``imported`` against the state dict of the ``ContrastiveModel`` that its method builds
    on ``imported.backbone``: the encoder must fit exactly (BN branches, shapes, normalisation,
    ``finetune_branch`` if given); each head (``head``, ``extra_heads.<name>``) is kept if it fits
    exactly, else listed as ignored (the releases' finetuning does not use their heads either)."""
    where = f"the {imported.format} release for method {imported.method!r}"
    mine = {k: v for k, v in imported.state_dict.items() if k.startswith("encoder.")}
    theirs = {k: v for k, v in model_state.items() if k.startswith("encoder.")}
    if set(mine) != set(theirs):
        has = sorted({k.split(".")[3] for k in theirs if re.fullmatch(r"encoder\.bn1\.bn\.\w+\.weight", k)})
        raise ReleaseError(f"{where} has an encoder with BN branches {', '.join(imported.branches)}, but "
                           f"the method's has {', '.join(has) or 'others'} ({len(set(mine) ^ set(theirs))} keys differ)")
    if bad := [k for k in mine if mine[k].shape != theirs[k].shape]:
        raise ReleaseError(f"{where} does not fit the method's encoder: wrong shapes {_first(bad, 2)}")
    for p in ("mean", "std"):
        if not torch.equal(mine[f"encoder.normalize.{p}"].float(), theirs[f"encoder.normalize.{p}"].float()):
            raise ReleaseError(f"{where} normalises its input with another {p} than the method")
    if finetune_branch not in (None, imported.finetune_branch):
        raise ReleaseError(f"{where} is finetuned from BN branch {imported.finetune_branch!r}, the "
                           f"method from {finetune_branch!r}")
    state, ignored, kept = dict(mine), dict(imported.provenance.get("ignored", {})), []
    filled = imported.provenance.get("filled", {})  # a zero bias the method's head may not have
    for group in imported.provenance.get("heads", []):
        part = {k: v for k, v in imported.state_dict.items()
                if k.startswith(group + ".") and (k in model_state or k not in filled)}
        if {k: v.shape for k, v in part.items()} == {k: v.shape for k, v in model_state.items() if k.startswith(group + ".")}:
            state.update(part)
            kept.append(group)
        else:
            ignored[f"{group} (release head)"] = (f"{len(part)} tensors: the method's {group} has another "
                                                  "structure; the release's finetuning does not use it either")
    provenance = {**imported.provenance, "heads": kept, "ignored": ignored,
                  "filled": {k: v for k, v in filled.items() if k in state}}
    return dataclasses.replace(imported, state_dict=state, provenance=provenance)


# ---- AdvCL's pseudo-labels -------------------------------------------------------------------

_LABEL_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
                  ("_codecs", "encode"),  # bytes in protocol-2 pickles
                  ("torch._utils", "_rebuild_tensor_v2"), ("torch.storage", "_load_from_bytes")}


class _LabelUnpickler(pickle.Unpickler):
    """Arrays and tensors only: AdvCL pickles numpy arrays, A-InfoNCE torch tensors."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _LABEL_GLOBALS:
            raise pickle.UnpicklingError(f"it needs {module}.{name}")
        if (module, name) == ("torch.storage", "_load_from_bytes"):  # a storage, itself loaded safely
            return lambda b: torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)
        return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def convert_advcl_labels(path: str | Path, keep: Sequence[int] | np.ndarray | torch.Tensor | None = None,
                         n_train: int = 50000) -> dict[str, np.ndarray]:
    """AdvCL's ``data/imagenet_clPretrain_pseudo_labels.pkl`` (CIFAR-10) or A-InfoNCE's
    ``Asym-AdvCL/data/cifar100_pseudo_labels.pkl`` as ``{"k2": ..., "k500": ...}`` (int64), for
    :func:`benchmark.labels.save_pseudo_labels`. ``pseudo_train_<h>`` has one label per image of the
    torchvision train split, in its order (dataset.py:27); ``pseudo_test_<h>`` is not used in
    pretraining. ``keep``: each acbench pretraining image's index in that split (``pretrain_x`` is
    the split minus the validation images, in order); ``None`` keeps all ``n_train``. Runs no code."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"pseudo-label file {path} does not exist")
    try:
        with open(path, "rb") as f:
            obj = _LabelUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise ReleaseError(f"refusing to load {path}: {e}, which is not plain data") from None
    except Exception as e:  # any other failure: not such a pickle
        raise ReleaseError(f"{path} is not a readable pseudo-label pickle ({type(e).__name__}: {_line(e)})") from None
    obj = obj if isinstance(obj, dict) else {}
    if missing := [f"pseudo_train_{h}" for h in ADVCL_CLUSTERS if f"pseudo_train_{h}" not in obj]:
        raise ReleaseError(f"{path}: missing {', '.join(missing)} (found: {', '.join(map(str, obj)) or 'no dict'})")
    idx = None if keep is None else torch.as_tensor(keep).cpu().numpy().astype(np.int64)
    if idx is not None and (idx.ndim != 1 or (len(idx) and not 0 <= idx.min() <= idx.max() < n_train)):
        raise ReleaseError(f"keep must be 1-D indices into the {n_train} training images")
    out: dict[str, np.ndarray] = {}
    for h in ADVCL_CLUSTERS:
        a = obj[f"pseudo_train_{h}"]
        a = a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or len(a) != n_train:
            raise ReleaseError(f"{path}: pseudo_train_{h} must be {n_train} integer labels, got {a.dtype} {a.shape}")
        out[f"k{h}"] = (a if idx is None else a[idx]).astype(np.int64)  # ranges: labels.check_pseudo_labels
    return out
