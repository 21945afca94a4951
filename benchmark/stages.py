"""The pipeline's stages: pretraining, finetuning and evaluation (pseudo-labels and other
upstream stages of a method live in their own modules and register in :data:`UPSTREAM`).

    pretrain (method, dataset, seed) [+ what the method requires] -> finetune (scheme) -> evaluate

Each is a :class:`benchmark.stage.Stage` run by :func:`benchmark.stage.run_once`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmark.checkpoints import CLASSIFIER, ENCODER, load_classifier, load_encoder
from benchmark.config import Preset
from benchmark.corruptions import CORRUPTION_VERSION, CorruptedSets, corrupted_sets
from benchmark.data import default_data_dir
from benchmark.devices import resolve_precision, to_layout
from benchmark.errors import ConfigError
from benchmark.evaluate import evaluate_classifier
from benchmark.finetune import run_finetune
from benchmark.inference import INFERENCE_FORM, fold_batchnorm
from benchmark.models import CheckpointMismatch
from benchmark.pretrain import PretrainConfig, run_pretrain
from benchmark.protocols import UNIFORM
from benchmark.registry import Registry
from benchmark.schemes import FinetuneConfig
from benchmark.stage import RunOptions, Stage, StageRun, dataset_for
from methods import get_method

# upstream stages a method may require (``Method.requires``): name -> factory(pretrain stage) -> Stage.
# Each factory's module registers itself; the built-in ones are listed here.
UPSTREAM: Registry[Callable[[PretrainStage], Stage]] = Registry(
    "upstream stage", builtins=("benchmark.pseudolabels", "benchmark.teacher"), entry_points="acbench.stages"
)


@dataclass(frozen=True)
class PretrainStage(Stage):
    kind = "pretrain"
    collective = True

    opts: RunOptions
    method: str
    params: dict[str, Any]
    preset: Preset
    dataset: str
    seed: int

    def pretrain_config(self) -> PretrainConfig:
        m = get_method(self.method, dataset=self.dataset, **self.preset.method_params(self.method, self.dataset, self.params))
        opts = self.opts
        return PretrainConfig(  # every resolved parameter: a changed default is another run
            method=self.method, method_params=dataclasses.asdict(m.params), dataset=self.dataset,
            image_size=self.preset.image_size, backbone=self.preset.backbone_for(self.dataset), seed=self.seed,
            recipe=self.preset.recipe(m.paper_recipe(self.dataset), m.loss_scale), train_limit=self.preset.train_limit,
            precision=resolve_precision(opts.precision, opts.torch_device()), compile=opts.compile,
            augmentation=self.preset.augmentation,
        )

    def upstream(self) -> dict[str, Stage]:
        m = get_method(self.method, dataset=self.dataset, **self.params)
        return {need: UPSTREAM.get(need)(self) for need in m.requires}

    def config(self) -> dict[str, Any]:
        return self.pretrain_config().to_dict()

    def data(self):
        return dataset_for(self.opts, self.dataset, self.preset.image_size)

    def prepare(self, opts: RunOptions, upstream: dict[str, str]) -> None:
        self.data()

    def extras(self, upstream: dict[str, str]) -> dict[str, Any]:
        """The inputs the method gets from its upstream stages (e.g. ``pseudo_labels``)."""
        out: dict[str, Any] = {}
        for role, stage in self.upstream().items():
            out.update(stage.outputs(self.opts, upstream[role]))
        return out

    def run(self, run: StageRun) -> dict[str, Any]:
        cfg = dataclasses.replace(self.pretrain_config(), extras_keys=run.upstream)
        return run_pretrain(cfg, self.data(), run.dir, self.opts.torch_device(),
                            extras=self.extras(run.upstream), progress=self.opts.progress)

    def describe(self) -> str:
        return f"pretrain {self.method} {self.dataset} s{self.seed}"


@dataclass(frozen=True)
class FinetuneStage(Stage):
    kind = "finetune"

    pretrain: Stage  # a PretrainStage, or any stage that leaves an encoder.pt
    scheme: str
    preset: Preset
    dataset: str
    seed: int
    selection: str = "last"
    protocol: str = UNIFORM
    method: str = ""  # the pretrained method (the robustssl protocol's settings depend on its family)
    finetune_dataset: str = ""  # empty: the pretraining dataset; else a transfer

    @property
    def target_dataset(self) -> str:
        return self.finetune_dataset or self.dataset

    def data(self, opts: RunOptions):
        """The finetuning data; a transfer resizes it to the pretraining data's resolution."""
        if self.target_dataset == self.dataset:
            return dataset_for(opts, self.dataset, self.preset.image_size)
        size = dataset_for(opts, self.dataset, self.preset.image_size).image_size
        return dataset_for(opts, self.target_dataset, size, resize=True)

    def upstream(self) -> dict[str, Stage]:
        return {"pretrain": self.pretrain}

    def finetune_config(self) -> FinetuneConfig:
        return self.preset.finetune_config(self.scheme, self.dataset, self.selection, protocol=self.protocol,
                                           method=self.method, finetune_dataset=self.target_dataset)

    def config(self) -> dict[str, Any]:
        transfer = {"finetune_dataset": self.finetune_dataset} if self.target_dataset != self.dataset else {}
        return {"finetune": self.finetune_config().to_dict(), "dataset": self.dataset, "seed": self.seed,
                "train_limit": self.preset.train_limit, "protocol": self.protocol, **transfer}

    def prepare(self, opts: RunOptions, upstream: dict[str, str]) -> None:
        data = self.data(opts)
        _, ck = load_encoder(opts.store.dir(self.pretrain.kind, upstream["pretrain"]) / ENCODER)
        if ck["backbone"]["in_channels"] != data.channels:
            raise ConfigError(f"cannot finetune a {ck['backbone']['in_channels']}-channel encoder on "
                              f"{self.target_dataset} ({data.channels} channels)")

    def run(self, run: StageRun) -> dict[str, Any]:
        opts = run.opts
        data = self.data(opts)
        return run_finetune(run.upstream_dir("pretrain") / ENCODER, self.finetune_config(), data, run.dir,
                            opts.torch_device(), self.seed, train_limit=self.preset.train_limit,
                            progress=opts.progress)

    def describe(self) -> str:
        return f"{self.pretrain.describe()} -> {self.scheme}"


@dataclass(frozen=True)
class EvaluateStage(Stage):
    kind = "evaluate"

    finetune: FinetuneStage
    attacks: tuple[str, ...]
    preset: Preset

    def upstream(self) -> dict[str, Stage]:
        return {"finetune": self.finetune}

    def config(self) -> dict[str, Any]:
        # the corruption functions' version only where they run: other evaluations keep their keys
        version = {"corruption": CORRUPTION_VERSION} if "corruption" in self.attacks else {}
        return {"attacks": list(self.attacks), "eval": dataclasses.asdict(self.preset.eval),
                "dataset": self.finetune.target_dataset, "inference": INFERENCE_FORM, **version}

    def corrupted(self, opts: RunOptions) -> CorruptedSets | None:
        """The corrupted test sets when ``corruption`` is evaluated (a missing CIFAR-C file: DataError)."""
        if "corruption" not in self.attacks:
            return None
        data = self.finetune.data(opts)
        return corrupted_sets(self.finetune.target_dataset, opts.data_dir or default_data_dir(),
                              data.test_x, data.test_y, self.preset.eval.n_test, self.preset.eval.seed)

    def prepare(self, opts: RunOptions, upstream: dict[str, str]) -> None:
        data = self.finetune.data(opts)
        self.corrupted(opts)
        path = opts.store.dir("finetune", upstream["finetune"]) / CLASSIFIER
        classes = load_classifier(path).fc.out_features
        if classes != data.num_classes:  # every scheme trains a head for its dataset: a store edited by hand
            raise CheckpointMismatch(
                f"{path}: a {classes}-class classifier cannot be evaluated on {data.name} "
                f"({data.num_classes} classes); finetune on {data.name} to get its own head"
            )

    def run(self, run: StageRun) -> dict[str, Any]:
        opts, ev = run.opts, self.preset.eval
        data = self.finetune.data(opts)
        device = opts.torch_device()
        n = ev.n_test or len(data.test_x)
        # the same function as classifier.pt with its BatchNorms folded into the convolutions
        classifier = load_classifier(run.upstream_dir("finetune") / CLASSIFIER, device)
        model = to_layout(fold_batchnorm(classifier), device)
        x = data.test_x[:n].to(device).float() / 255
        y = data.test_y[:n].to(device)
        result = evaluate_classifier(model, x, y, list(self.attacks), ev, progress=opts.progress,
                                     corrupted=self.corrupted(opts))
        return {**result, "n_test": int(len(x))}

    def describe(self) -> str:
        return f"{self.finetune.describe()} eval {'+'.join(self.attacks)}"
