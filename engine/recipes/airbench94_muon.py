"""The record recipe: cifar10-airbench's airbench94 with the Muon optimizer
(94.01% mean over 200 runs, 2.59 s on an A100), number by number
(docs/record-recipe.md). Its numbers, then its network, whitening, optimizer
groups, loss, augmentation and evaluation views; the engine does the rest.

    whiten (frozen 2x2 conv, 3 -> 24, trained bias) -> GELU
    3 groups: conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU  (64, 256, 256)
    max-pool 3 -> linear 256 -> 10 (no bias) -> / 256
About a third of the seed recipe's arithmetic: batch 2000, 8 epochs, 200 steps.
Muon on the 3x3 filters, Nesterov SGD on the biases and the head, linear decay
to zero; alternating flips and -2..2 translations; no EMA; six-view test-time
augmentation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from engine.checks import (require_finite_non_negative, require_finite_positive, require_fraction,
                           require_reflect_pad, require_unit_interval)
from engine.training.config import IMAGE_SIZE, NUM_CLASSES, RecipeConfig
from engine.training.data import Augmentation
from engine.training.evaluation import flip_averaged_logits, plain_logits
from engine.training.layers import BatchNorm, MaxPool2x2, on_device, stage_outputs
from engine.training.ops import Ops
from engine.training.optim import Group
from engine.training.whitening import patch_count, streamed_patch_statistics, uncentered_second_moment, whitening_filters

PRESETS = {"airbench94-muon": {}}


@dataclass(frozen=True)
class Config(RecipeConfig):
    recipe: ClassVar[str] = "airbench94-muon"
    reported_as: ClassVar[str] = "accuracy"       # what the summary calls the result (six views)
    has_ema: ClassVar[bool] = False               # the reported network is the trained one
    group_activation: ClassVar[str] = "norm_gelu"     # the Ops entry after each BatchNorm of a group
    float32_batchnorm: ClassVar[bool] = True          # BatchNorm layers stay float32 in a float16 network

    # Data and augmentation (train_images: RecipeConfig).
    batch_size: int = 2000
    test_batch_size: int = 2000
    mean: tuple = (0.4914, 0.4822, 0.4465)
    std: tuple = (0.2470, 0.2435, 0.2616)
    pad: int = 2                      # translations of -2..2 pixels per image and axis, every epoch

    # Network: widths base, 4 base, 4 base.
    base_width: int = 64
    bn_eps: float = 1e-12
    bn_momentum: float = 0.4          # PyTorch convention: the running statistic keeps 60%

    # Whitening: the first 5,000 training images' uncentered patch second moment.
    whiten_kernel: int = 2
    whiten_images: int = 5_000
    whiten_eps: float = 5e-4
    whiten_chunk: int = 5_000         # images per streamed statistics chunk (bounds memory)
    whiten_bias_epochs: int = 3       # the whitening bias trains for 3 epochs' worth of steps (75)

    # Training: 8 epochs of 25 steps.
    epochs: int = 8
    label_smoothing: float = 0.2
    sgd_momentum: float = 0.85        # Nesterov, for the biases and the head
    bias_lr: float = 0.053            # whitening bias and BatchNorm biases
    head_lr: float = 0.67
    weight_decay_per_image: float = 2e-6   # x batch size, / each group's lr (PyTorch-style decay)
    muon_lr: float = 0.24
    muon_momentum: float = 0.6        # Nesterov
    newton_schulz_steps: int = 3

    def __post_init__(self):
        super().__post_init__()
        for name in ("whiten_kernel", "whiten_images", "whiten_chunk", "newton_schulz_steps", "bn_eps",
                     "whiten_eps"):
            require_finite_positive(name, getattr(self, name))
        for name in ("pad", "whiten_bias_epochs", "bias_lr", "head_lr", "muon_lr", "weight_decay_per_image"):
            require_finite_non_negative(name, getattr(self, name))
        for name in ("label_smoothing", "sgd_momentum", "muon_momentum"):
            require_fraction(name, getattr(self, name))
        require_unit_interval("bn_momentum", self.bn_momentum)
        require_reflect_pad(self.pad, IMAGE_SIZE)
        if self.bias_lr == 0 or self.head_lr == 0:
            raise ValueError("bias_lr and head_lr must be positive: each group's weight decay is divided by them")

    # ---- derived quantities ----
    @property
    def widths(self) -> tuple:
        b = self.base_width
        return (b, 4 * b, 4 * b)

    @property
    def whiten_bias_steps(self) -> int:
        return math.ceil(self.whiten_bias_epochs * self.steps_per_epoch)

    @property
    def weight_decay(self) -> float:
        """Decay * lr per step, for every SGD group (each group's decay is this / its lr)."""
        return self.weight_decay_per_image * self.batch_size

    # ---- what the engine asks of a recipe ----
    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(pad=self.pad, flip="alternating")

    def build_network(self, ops: Ops, device, dtype) -> "Network":
        """The network in `dtype` (its BatchNorm layers in float32 where float32_batchnorm)."""
        return on_device(lambda: Network(self, ops), device, dtype,
                         keep_float32=(BatchNorm,) if self.float32_batchnorm else ())

    def set_whitening(self, model: "Network", train_images: torch.Tensor, ops: Ops):
        """Filters from the first `whiten_images` normalised training images: the uncentered
        second moment of their 2x2 patches, eigenvector i / sqrt(eigenvalue i + eps) in
        descending order, then the same 12 filters negated."""
        images = train_images[:self.whiten_images]
        mean, covariance = streamed_patch_statistics(images, self.whiten_kernel, self.whiten_chunk,
                                                     ops.patch_covariance)
        moment = uncentered_second_moment(mean, covariance, patch_count(images, self.whiten_kernel))
        filters, _ = whitening_filters(moment, images.shape[1], self.whiten_kernel, self.whiten_eps)
        with torch.no_grad():
            model.whiten.weight.copy_(torch.cat([filters, -filters]))

    def optimizer_groups(self, model: "Network") -> list[Group]:
        """Nesterov SGD for the whitening bias (its rate reaches 0 at whiten_bias_steps: from
        there it computes no gradient, a second compiled graph), the BatchNorm biases and
        the head; Muon for every 3x3 filter. Rates decay linearly to 0 over the run."""
        decay, total = self.weight_decay, self.total_steps
        filters = [p for p in model.parameters() if p.requires_grad and p.dim() == 4]
        norm_biases = [m.bias for m in model.modules() if isinstance(m, BatchNorm)]

        def whiten_bias_schedule(step: int) -> float:
            return max(0.0, 1.0 - step / max(self.whiten_bias_steps, 1))

        def linear_decay(step: int) -> float:
            return max(0.0, 1.0 - step / total)

        sgd = dict(rule="sgd", momentum=self.sgd_momentum)
        return [
            Group("whiten bias", [model.whiten.bias], peak_lr=self.bias_lr, weight_decay=decay / self.bias_lr,
                  schedule=whiten_bias_schedule, trains_until=max(self.whiten_bias_steps, 1), **sgd),
            Group("norm biases", norm_biases, peak_lr=self.bias_lr, weight_decay=decay / self.bias_lr,
                  schedule=linear_decay, **sgd),
            Group("head", [model.head.weight], peak_lr=self.head_lr, weight_decay=decay / self.head_lr,
                  schedule=linear_decay, **sgd),
            Group("filters", filters, rule="muon", peak_lr=self.muon_lr, momentum=self.muon_momentum,
                  newton_schulz_steps=self.newton_schulz_steps, schedule=linear_decay, **self.muon_settings()),
        ]

    def muon_settings(self) -> dict:
        """How this recipe's Muon differs from the engine's default form (airbench's: none)."""
        return {}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy, summed over the batch."""
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction="sum")

    def ema_updates_after(self, step: int) -> bool:
        return False

    def evaluation_views(self, final: bool):
        """Six views for the reported result; plain logits for the per-epoch diagnostic."""
        return six_view_logits if final else plain_logits

    def warm_up_config(self) -> "Config":
        """Two epochs of two batches: every compiled function runs, the bias schedule included."""
        return self.replace(train_images=2 * self.batch_size, epochs=2, whiten_bias_epochs=1)


def six_view_logits(forward, images: torch.Tensor) -> torch.Tensor:
    """0.5 x the flip-averaged logits of the images + 0.5 x the mean of the flip-averaged
    logits of two one-pixel translations (reflect-pad 1, crops at (0, 0) and (2, 2))."""
    size = images.shape[-1]
    padded = F.pad(images, (1,) * 4, mode="reflect")
    shifted = [padded[:, :, :size, :size], padded[:, :, 2:size + 2, 2:size + 2]]
    logits = flip_averaged_logits(forward, torch.cat([images] + shifted))
    n = len(images)
    return 0.5 * logits[:n] + 0.25 * (logits[n:2 * n] + logits[2 * n:])


# ---- the network ----

class Conv(nn.Conv2d):
    """3x3 'same' convolution without bias; its first `in` filters start as the identity."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__(channels_in, channels_out, 3, padding="same", bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[:channels_in])


class ConvGroup(nn.Module):
    """conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU (no residual, no SE); the
    activation is the recipe's group_activation (hiverge's: SiLU)."""

    def __init__(self, channels_in: int, channels_out: int, config: Config, ops: Ops):
        super().__init__()
        self.norm_activation = getattr(ops, config.group_activation)
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = MaxPool2x2()
        self.norm1 = BatchNorm(channels_out, config.bn_eps, config.bn_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, config.bn_eps, config.bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_activation(self.conv1(x), self.norm1, pool=self.pool)
        return self.norm_activation(self.conv2(x), self.norm2)


class Network(nn.Module):
    def __init__(self, config: Config, ops: Ops):
        super().__init__()
        self.config, self.ops = config, ops
        whiten_width = 2 * 3 * config.whiten_kernel ** 2        # the filters and their negatives
        self.whiten = nn.Conv2d(3, whiten_width, config.whiten_kernel, bias=True)
        self.whiten.weight.requires_grad_(False)                # set from the data, never trained
        widths = config.widths
        self.group1 = ConvGroup(whiten_width, widths[0], config, ops)
        self.group2 = ConvGroup(widths[0], widths[1], config, ops)
        self.group3 = ConvGroup(widths[1], widths[2], config, ops)
        self.head = nn.Linear(widths[2], NUM_CLASSES, bias=False)
        with torch.no_grad():
            self.head.weight.div_(self.head.weight.std())

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the stem and of each group (for shape checks)."""
        stem = self.ops.gelu(self.whiten(x))
        return stage_outputs(stem, (self.group1, self.group2, self.group3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]
        x = torch.amax(x, dim=(2, 3))          # max-pool 3 over the final 3x3 map
        return self.head(x) / x.shape[-1]
