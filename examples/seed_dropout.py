"""The seed recipe with one change: dropout before the classifier.

An example of your own recipe (docs/own-recipe.md): a file of the shape of
engine/recipes/seed.py that takes the seed recipe's Config and network, adds
one field and changes one method. Run it with

    python run.py --recipe examples/seed_dropout.py --data synthetic --device cpu --base-width 16 --epochs 2
    python run.py --recipe examples/seed_dropout.py --set dropout=0,0.2 --runs 4   # does it help?

Every option works on it (--compile, --kernels, --json, --plot, --save; `run.py
evaluate` rebuilds it from the file the checkpoint records).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from engine.checks import require_fraction
from engine.training.layers import on_device
from engine.recipes import seed

PRESETS = {"seed-dropout": {}}


@dataclass(frozen=True)
class Config(seed.Config):
    recipe: ClassVar[str] = "seed-dropout"       # its own name, in reports and checkpoints
    dropout: float = 0.1                         # share of the pooled features zeroed in training

    def __post_init__(self):
        super().__post_init__()
        require_fraction("dropout", self.dropout)

    def build_network(self, ops, device, dtype) -> "Network":
        return on_device(lambda: Network(self, ops), device, dtype)


class Network(seed.Network):
    """The seed network, with dropout on the pooled features (identity in eval mode)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.amax(self.features(x)[-1], dim=(2, 3))
        x = F.dropout(x, self.config.dropout, self.training)
        return self.classifier(x) * self.config.logit_scale
