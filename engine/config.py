"""The recipe's hyperparameters: the one place they are written down.

Defaults are the numbers of ../shared/SPEC.md (hlb-CIFAR10, "under 10 seconds"
release). Code receives a `Config` explicitly; everything derived from it
(steps per epoch, schedule lengths, EMA start, per-group learning rates) is a
property computed here, never typed in a second time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.checks import require_field_types, require_finite_non_negative, require_finite_positive

CIFAR10_MEAN = (0.4913997551666284, 0.48215855929893703, 0.4465309133731618)
CIFAR10_STD = (0.24703225141799082, 0.24348516474564, 0.26158783926049628)
NUM_CLASSES = 10
IMAGE_SIZE = 32                       # CIFAR-10 images are 32 x 32 pixels


@dataclass(frozen=True)
class Config:
    # Data and augmentation.
    train_images: int = 50_000        # size of the training split actually used
    batch_size: int = 512
    test_batch_size: int = 1000
    pad: int = 3                      # reflect padding each side; crops draw offsets 0..2*pad
    cutout: int = 0                   # cutout square size; 0 disables it (SPEC)
    flip: bool = True

    # Network.
    base_width: int = 64              # group widths are base/2, 2*base, 4*base, 8*base
    se_reduction: int = 16            # squeeze-and-excitation hidden size = C // 16
    bn_eps: float = 1e-12
    bn_momentum: float = 0.8          # PyTorch convention: running stat keeps 20% of its old value
    logit_scale: float = 0.1

    # Whitening.
    whiten_kernel: int = 2
    whiten_eps: float = 0.01          # filter k = eigenvector k / sqrt(eigenvalue k + eps)
    whiten_chunk: int = 5_000         # images per streamed covariance chunk (bounds memory)

    # Training.
    epochs: int = 10
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
        require_field_types(self)
        positive = ("train_images", "batch_size", "test_batch_size", "base_width", "epochs",
                    "se_reduction", "whiten_kernel", "whiten_chunk", "ema_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("pad", "cutout", "ema_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.train_images < self.batch_size:
            raise ValueError(f"the training set ({self.train_images} images) is smaller than one "
                             f"batch ({self.batch_size}); lower --batch-size")
        if self.ema_epochs >= self.epochs:
            raise ValueError(f"ema_epochs ({self.ema_epochs}) must be smaller than epochs ({self.epochs})")
        if self.base_width % 2:
            raise ValueError(f"base_width must be even, got {self.base_width}")
        for name in ("label_smoothing", "momentum", "ema_decay", "warmup_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "final_lr_ratio", "initial_lr_ratio"):
            require_finite_non_negative(name, getattr(self, name))
        for name in ("bn_eps", "logit_scale", "whiten_eps", "loss_scale", "bias_scale"):
            require_finite_positive(name, getattr(self, name))
        if not 0.0 <= self.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1], got {self.bn_momentum}")
        if self.cutout > IMAGE_SIZE:
            raise ValueError(f"cutout ({self.cutout}) is larger than the {IMAGE_SIZE}x{IMAGE_SIZE} image; "
                             f"use at most {IMAGE_SIZE} (0 turns it off)")
        if self.pad >= IMAGE_SIZE:
            raise ValueError(f"pad ({self.pad}) must be smaller than the image ({IMAGE_SIZE}) for reflect padding")

    # ---- derived quantities ----
    @property
    def widths(self) -> dict:
        b = self.base_width
        return {"init": b // 2, "group1": 2 * b, "group2": 4 * b, "group3": 8 * b}

    @property
    def steps_per_epoch(self) -> int:
        return self.train_images // self.batch_size       # the last partial batch is dropped

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

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
        return (self.epochs - self.ema_epochs) * self.steps_per_epoch

    @property
    def ema_step_decay(self) -> float:
        return self.ema_decay ** self.ema_every

    def ema_updates_after(self, step: int) -> bool:
        """Whether the EMA acts after 0-based optimizer step `step`. The release counts steps
        from 1 and acts when that count is a multiple of ema_every inside the EMA epochs:
        after steps 777 (the copy), 779, ..., 969, so the average includes the very last step."""
        return step >= self.ema_start_step and (step + 1) % self.ema_every == 0

    @property
    def bias_lr(self) -> float:
        return self.lr * self.bias_scale

    @property
    def bias_weight_decay(self) -> float:
        return self.weight_decay / self.bias_scale

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
