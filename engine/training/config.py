"""What every recipe's configuration shares.

A recipe's numbers live in its own file (engine/recipes/seed.py,
engine/recipes/airbench94_muon.py), in a frozen dataclass named `Config` that
derives from `RecipeConfig`. The engine (loader, trainer, reports, checkpoints)
receives that object explicitly and asks it for what the recipe decides: its
network, whitening, optimizer groups, loss, augmentation, EMA steps and
evaluation views. `RecipeConfig` holds the fields and derived step counts every
recipe has; engine/checks.py the value checks every recipe's `__post_init__` calls.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from engine.checks import require_field_types, require_finite_positive

NUM_CLASSES = 10
IMAGE_SIZE = 32                       # CIFAR-10 images are 32 x 32 pixels


@dataclass(frozen=True)
class RecipeConfig:
    """Fields every recipe has; a recipe's `Config` adds its own after them."""
    recipe: ClassVar[str] = ""         # the recipe's name in --recipe, reports and checkpoints
    reported_as: ClassVar[str] = "accuracy"   # what reports call a run's result
    # --kernels when not given, on CUDA (the CPU always defaults to eager): our Triton kernels,
    # unless the GPU plan (bench/gpu_plan.py) has Inductor's own code moving fewer bytes.
    cuda_kernels: ClassVar[str] = "triton"

    train_images: int = 50_000         # size of the training split actually used
    batch_size: int = 512
    test_batch_size: int = 1000
    epochs: int = 10
    base_width: int = 64               # the recipe's widths scale with it

    def __post_init__(self):
        require_field_types(self)
        for name in ("train_images", "batch_size", "test_batch_size", "epochs", "base_width"):
            require_finite_positive(name, getattr(self, name))
        if self.train_images < self.batch_size:
            raise ValueError(f"the training set ({self.train_images} images) is smaller than one "
                             f"batch ({self.batch_size}); lower --batch-size")

    @property
    def steps_per_epoch(self) -> int:
        return self.train_images // self.batch_size       # the last partial batch is dropped

    @property
    def total_steps(self) -> int:
        """Optimizer steps in a run. A recipe whose `epochs` is fractional (7.59) ends inside
        its last epoch: math.ceil(epochs * steps_per_epoch)."""
        return math.ceil(self.epochs * self.steps_per_epoch)

    @property
    def epoch_count(self) -> int:
        """Epochs the run enters, the last one possibly cut short at total_steps."""
        return -(-self.total_steps // self.steps_per_epoch)

    @classmethod
    def from_overrides(cls, **fields):
        """The recipe with `fields` changed (a recipe may adjust related fields here)."""
        return cls(**fields)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set:
        return {field.name for field in dataclasses.fields(cls)}
