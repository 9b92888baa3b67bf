"""The seed recipe: hlb-CIFAR10's "under 10 seconds" release, number by number
(docs/recipe.md). Its numbers, then its network, optimizer groups, loss,
augmentation and evaluation views; the engine does the rest.

    whiten (frozen 2x2 conv, 3 -> 12) -> project (1x1, 12 -> 32) -> BN -> GELU
    group1 (32 -> 128, full, SE) -> group2 (128 -> 256, short) -> group3 (256 -> 512, full, SE)
    global max-pool -> linear 512 -> 10 (no bias) -> x 0.1
Widths scale with `base_width` (64 here). Spatial sizes 31 -> 15 -> 7 -> 3.
Two Nesterov SGD groups on a linear one-cycle schedule, label-smoothed loss
summed with a 1/16 scale, an EMA over the last two epochs, flip test-time
augmentation. `seed-long` is the release's long configuration: base width 128
and 80 epochs (reported about 95.8%).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
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
from engine.training.whitening import whitening_weight

# --recipe names of this file's configurations: the release, and its long version.
PRESETS = {"seed": {}, "seed-long": {"base_width": 128, "epochs": 80}}


@dataclass(frozen=True)
class Config(RecipeConfig):
    recipe: ClassVar[str] = "seed"
    reported_as: ClassVar[str] = "EMA accuracy"   # what the summary calls the result

    # Data and augmentation (train_images, batch_size 512, test_batch_size 1000: RecipeConfig).
    mean: tuple = (0.4913997551666284, 0.48215855929893703, 0.4465309133731618)
    std: tuple = (0.24703225141799082, 0.24348516474564, 0.26158783926049628)
    pad: int = 3                      # reflect padding each side; crops draw offsets 0..2*pad
    cutout: int = 0                   # cutout square size; 0 disables it
    flip: bool = True                 # a random horizontal flip per image and epoch

    # Network (base_width 64: RecipeConfig).
    se_reduction: int = 16            # squeeze-and-excitation hidden size = C // 16
    bn_eps: float = 1e-12
    bn_momentum: float = 0.8          # PyTorch convention: running stat keeps 20% of its old value
    logit_scale: float = 0.1

    # Whitening.
    whiten_kernel: int = 2
    whiten_eps: float = 0.01          # filter k = eigenvector k / sqrt(eigenvalue k + eps)
    whiten_chunk: int = 5_000         # images per streamed covariance chunk (bounds memory)

    # Training (epochs 10: RecipeConfig).
    label_smoothing: float = 0.2
    loss_scale: float = 1.0 / 16      # per-sample losses * 1/16, summed, / (1/16)
    lr: float = 1.15 * 1.35 / 512     # peak rate of the non-bias group
    weight_decay: float = 0.85 * 4.8e-4 * 512
    bias_scale: float = 32.0          # bias group: lr * 32, weight decay / 32
    momentum: float = 0.85            # Nesterov, not cycled
    warmup_fraction: float = 0.2      # of all steps: the one-cycle peak sits at 0.2 * total steps
    final_lr_ratio: float = 0.135     # the ramp ends at 0.135 x peak
    initial_lr_ratio: float = 1e-16   # the ramp starts "from ~0"

    # EMA over the last epochs; the schedule is also stretched over the epochs before them.
    ema_epochs: int = 2
    ema_decay: float = 0.986
    ema_every: int = 2                # update every 2nd step with decay 0.986**2

    # Evaluation.
    tta_flip: bool = True

    def __post_init__(self):
        super().__post_init__()
        for name in ("se_reduction", "whiten_kernel", "whiten_chunk", "ema_every",
                     "bn_eps", "logit_scale", "whiten_eps", "loss_scale", "bias_scale"):
            require_finite_positive(name, getattr(self, name))
        for name in ("pad", "cutout", "ema_epochs", "lr", "weight_decay", "final_lr_ratio", "initial_lr_ratio"):
            require_finite_non_negative(name, getattr(self, name))
        for name in ("label_smoothing", "momentum", "ema_decay", "warmup_fraction"):
            require_fraction(name, getattr(self, name))
        if self.ema_epochs >= self.epochs:
            raise ValueError(f"ema_epochs ({self.ema_epochs}) must be smaller than epochs ({self.epochs})")
        if self.base_width % 2:
            raise ValueError(f"base_width must be even, got {self.base_width}")
        require_unit_interval("bn_momentum", self.bn_momentum)
        require_reflect_pad(self.pad, IMAGE_SIZE)
        if self.cutout > IMAGE_SIZE:
            raise ValueError(f"cutout ({self.cutout}) is larger than the {IMAGE_SIZE}x{IMAGE_SIZE} image; "
                             f"use at most {IMAGE_SIZE} (0 turns it off)")

    @classmethod
    def from_overrides(cls, **fields) -> "Config":
        """The recipe with `fields` changed. Fewer epochs than the EMA needs shorten the EMA
        to epochs - 1 unless ema_epochs is given too."""
        if "epochs" in fields and "ema_epochs" not in fields:
            fields["ema_epochs"] = min(cls.ema_epochs, fields["epochs"] - 1)
        return cls(**fields)

    # ---- derived quantities ----
    @property
    def widths(self) -> dict:
        b = self.base_width
        return {"init": b // 2, "group1": 2 * b, "group2": 4 * b, "group3": 8 * b}

    @property
    def scheduled_steps(self) -> int:
        """Steps the one-cycle schedule spans; the EMA epochs run at its final rate."""
        return (self.epochs - self.ema_epochs) * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        """Steps of the rising ramp (194 of 776 in the recipe: 0.2 * 970)."""
        return round(self.warmup_fraction * self.total_steps)

    @property
    def ema_start_step(self) -> int:
        """The EMA starts where the schedule stops."""
        return self.scheduled_steps

    @property
    def ema_step_decay(self) -> float:
        return self.ema_decay ** self.ema_every

    @property
    def bias_lr(self) -> float:
        return self.lr * self.bias_scale

    @property
    def bias_weight_decay(self) -> float:
        return self.weight_decay / self.bias_scale

    # ---- what the engine asks of a recipe ----
    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(pad=self.pad, flip="random" if self.flip else "none", cutout=self.cutout)

    def build_network(self, ops: Ops, device, dtype) -> "Network":
        return on_device(lambda: Network(self, ops), device, dtype)

    def set_whitening(self, model: "Network", train_images: torch.Tensor, ops: Ops):
        """The frozen whitening filters from every normalised training image (N, 3, 32, 32)."""
        weight = whitening_weight(train_images, self.whiten_kernel, self.whiten_eps, self.whiten_chunk,
                                  ops.patch_covariance)
        with torch.no_grad():
            model.whiten.weight.copy_(weight)

    def optimizer_groups(self, model: "Network") -> list[Group]:
        """Two Nesterov SGD groups on the one-cycle schedule: every trainable parameter whose
        name does not contain 'bias', and those that do."""
        bias, other = parameter_groups(model)
        schedule = partial(lr_factor, config=self)
        return [Group("other", other, "sgd", self.lr, self.momentum, self.weight_decay, schedule=schedule),
                Group("bias", bias, "sgd", self.bias_lr, self.momentum, self.bias_weight_decay, schedule=schedule)]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return loss_function(logits, labels, self)

    @property
    def has_ema(self) -> bool:
        return self.ema_epochs > 0

    def ema_updates_after(self, step: int) -> bool:
        """Whether the EMA acts after 0-based optimizer step `step`. The release counts steps
        from 1 and acts when that count is a multiple of ema_every inside the EMA epochs:
        after steps 777 (the copy), 779, ..., 969, so the average includes the very last step."""
        return step >= self.ema_start_step and (step + 1) % self.ema_every == 0

    def evaluation_views(self, final: bool):
        """Flip test-time augmentation (or none without tta_flip), per epoch and at the end."""
        return flip_averaged_logits if self.tta_flip else plain_logits

    def warm_up_config(self) -> "Config":
        """Two epochs of two batches, the EMA in the second: every compiled function runs."""
        return self.replace(train_images=2 * self.batch_size, epochs=2, ema_epochs=1)


def lr_factor(step: int, config: Config) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based).

    Linear one-cycle over `scheduled_steps`: from initial_lr_ratio at step 0 up
    to 1 at step warmup_steps - 1, then down to final_lr_ratio at step
    scheduled_steps - 1, where the schedule stops and the rate stays.
    """
    peak_step = config.warmup_steps - 1
    last_step = config.scheduled_steps - 1
    step = min(step, last_step)
    if step <= peak_step:
        start = config.initial_lr_ratio
        return start + (1.0 - start) * step / max(peak_step, 1)
    return 1.0 + (config.final_lr_ratio - 1.0) * (step - peak_step) / max(last_step - peak_step, 1)


def loss_function(logits: torch.Tensor, labels: torch.Tensor, config: Config) -> torch.Tensor:
    """Label-smoothed cross-entropy per sample, scaled by 1/16, summed in the logits'
    dtype, then unscaled: the sum, not the mean, is back-propagated."""
    losses = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing, reduction="none")
    return (losses * config.loss_scale).sum() / config.loss_scale


# ---- the network ----

class SqueezeExcite(nn.Module):
    """The gate s = sigmoid(fc2(GELU(fc1(mean of r over H, W)))), one value per sample and channel."""

    def __init__(self, channels: int, config: Config, ops: Ops):
        super().__init__()
        hidden = max(channels // config.se_reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.ops = ops

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.ops.squeeze_excite(r, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


class ConvGroup(nn.Module):
    """conv1 3x3 -> max-pool 2 -> BN -> GELU; a full group adds the SE-gated residual branch."""

    def __init__(self, channels_in: int, channels_out: int, full: bool, config: Config, ops: Ops):
        super().__init__()
        self.ops, self.full = ops, full
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding="same", bias=False)
        self.pool = MaxPool2x2()
        self.norm1 = BatchNorm(channels_out, config.bn_eps, config.bn_momentum)
        if full:
            self.squeeze_excite = SqueezeExcite(channels_out, config, ops)
            self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding="same", bias=False)
            self.norm2 = BatchNorm(channels_out, config.bn_eps, config.bn_momentum)
            self.conv3 = nn.Conv2d(channels_out, channels_out, 3, padding="same", bias=False)
            self.norm3 = BatchNorm(channels_out, config.bn_eps, config.bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.ops.norm_gelu(self.conv1(x), self.norm1, pool=self.pool)
        if not self.full:
            return r
        gate = self.squeeze_excite(r)
        x = self.ops.norm_gelu(self.conv2(r), self.norm2)
        return self.ops.norm_gelu(self.conv3(x), self.norm3, residual=r, gate=gate)


class Network(nn.Module):
    def __init__(self, config: Config, ops: Ops):
        super().__init__()
        widths = config.widths
        patch_values = 3 * config.whiten_kernel ** 2
        self.config, self.ops = config, ops
        self.whiten = nn.Conv2d(3, patch_values, config.whiten_kernel, bias=False)
        self.whiten.weight.requires_grad_(False)            # set once from the data, never trained
        self.project = nn.Conv2d(patch_values, widths["init"], 1, bias=False)
        self.project_norm = BatchNorm(widths["init"], config.bn_eps, config.bn_momentum)
        self.group1 = ConvGroup(widths["init"], widths["group1"], True, config, ops)
        self.group2 = ConvGroup(widths["group1"], widths["group2"], False, config, ops)
        self.group3 = ConvGroup(widths["group2"], widths["group3"], True, config, ops)
        self.classifier = nn.Linear(widths["group3"], NUM_CLASSES, bias=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the stem and of each group (for shape checks)."""
        stem = self.ops.norm_gelu(self.project(self.whiten(x)), self.project_norm)
        return stage_outputs(stem, (self.group1, self.group2, self.group3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]
        x = torch.amax(x, dim=(2, 3))                   # global max-pool
        return self.classifier(x) * self.config.logit_scale


def parameter_groups(model: nn.Module) -> tuple[list, list]:
    """(bias parameters, other parameters) among the trainable ones. "bias" means
    every parameter whose name contains 'bias': BatchNorm and SE biases."""
    bias, other = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (bias if "bias" in name else other).append(parameter)
    return bias, other
