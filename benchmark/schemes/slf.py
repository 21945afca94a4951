"""SLF, standard linear finetuning: a linear head on clean images, the encoder frozen in eval mode.

Recipe (``docs/protocol.md``): SGD momentum 0.9, weight decay 2e-4, batch 512, 25 epochs, lr x0.1
at epochs 10 and 20; lr 0.01 (CIFAR-10), 0.05 (CIFAR-100), 0.1 (STL-10). ALF shares it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from benchmark.models import Classifier
from benchmark.schemes import SCHEMES, FinetuneConfig, Scheme

LINEAR_LR = {"cifar10": 0.01, "cifar100": 0.05, "stl10": 0.1}  # other datasets: CIFAR-10's


@SCHEMES.register("slf", label="SLF", order=0)
class StandardLinear(Scheme):
    """Cross-entropy of the linear head on features of :meth:`inputs`; the encoder never changes.

    Subclasses that train the head on other images (adversarial, noisy) override :meth:`inputs`.
    """

    trains_encoder = False

    def paper_config(self, dataset: str) -> FinetuneConfig:
        lr = LINEAR_LR.get(dataset, LINEAR_LR["cifar10"])
        return FinetuneConfig(self.name, epochs=25, batch_size=512, lr=lr, milestones=(10, 20))

    def inputs(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig
    ) -> torch.Tensor:
        """The images the head is trained on (called in eval mode): here the clean batch."""
        return x

    def loss(
        self, model: Classifier, x: torch.Tensor, y: torch.Tensor, cfg: FinetuneConfig
    ) -> torch.Tensor:
        model.eval()  # frozen encoder: BN statistics are not updated
        x = self.inputs(model, x, y, cfg)
        with torch.no_grad():
            feats = model.encoder(x)
        return F.cross_entropy(model.fc(feats), y)
