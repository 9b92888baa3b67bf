"""The network of the recipe (SPEC "Network"), its elementwise work routed through `Ops`.

    whiten (frozen 2x2 conv, 3 -> 12) -> project (1x1, 12 -> 32) -> BN -> GELU
    group1 (32 -> 128, full, SE) -> group2 (128 -> 256, short) -> group3 (256 -> 512, full, SE)
    global max-pool -> linear 512 -> 10 (no bias) -> x 0.1
Widths scale with `base_width` (64 in the recipe). Spatial sizes 31 -> 15 -> 7 -> 3.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.config import NUM_CLASSES, Config
from engine.ops import Ops


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with its weight frozen at 1 (only the bias trains), eps and momentum from SPEC."""

    def __init__(self, channels: int, config: Config):
        super().__init__(channels, eps=config.bn_eps, momentum=config.bn_momentum)
        self.weight.requires_grad_(False)


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
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, config)
        if full:
            self.squeeze_excite = SqueezeExcite(channels_out, config, ops)
            self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding="same", bias=False)
            self.norm2 = BatchNorm(channels_out, config)
            self.conv3 = nn.Conv2d(channels_out, channels_out, 3, padding="same", bias=False)
            self.norm3 = BatchNorm(channels_out, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.ops.norm_gelu(self.pool(self.conv1(x)), self.norm1)
        if not self.full:
            return r
        gate = self.squeeze_excite(r)
        x = self.ops.norm_gelu(self.conv2(r), self.norm2)
        x = self.ops.channel_scale(self.conv3(x), gate)
        return self.ops.norm_gelu(x, self.norm3, residual=r)


class Network(nn.Module):
    def __init__(self, config: Config, ops: Ops):
        super().__init__()
        widths = config.widths
        patch_values = 3 * config.whiten_kernel ** 2
        self.logit_scale = config.logit_scale
        self.whiten = nn.Conv2d(3, patch_values, config.whiten_kernel, bias=False)
        self.whiten.weight.requires_grad_(False)            # set once from the data, never trained
        self.project = nn.Conv2d(patch_values, widths["init"], 1, bias=False)
        self.project_norm = BatchNorm(widths["init"], config)
        self.group1 = ConvGroup(widths["init"], widths["group1"], True, config, ops)
        self.group2 = ConvGroup(widths["group1"], widths["group2"], False, config, ops)
        self.group3 = ConvGroup(widths["group2"], widths["group3"], True, config, ops)
        self.classifier = nn.Linear(widths["group3"], NUM_CLASSES, bias=False)
        self.ops = ops

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the stem and of each group (for shape checks)."""
        x = self.ops.norm_gelu(self.project(self.whiten(x)), self.project_norm)
        outputs = [x]
        for group in (self.group1, self.group2, self.group3):
            x = group(x)
            outputs.append(x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)[-1]
        x = torch.amax(x, dim=(2, 3))                   # global max-pool
        return self.classifier(x) * self.logit_scale


def parameter_groups(model: nn.Module) -> tuple[list, list]:
    """(bias parameters, other parameters) among the trainable ones. "bias" means
    every parameter whose name contains 'bias': BatchNorm and SE biases."""
    bias, other = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (bias if "bias" in name else other).append(parameter)
    return bias, other


def build_network(config: Config, ops: Ops, device, dtype, whitening_weight=None) -> Network:
    """The network, initialised directly on `device` (from that device's random stream:
    on a GPU no host-side initialisation or copy), then cast to `dtype`, channels_last."""
    with torch.device(device):
        model = Network(config, ops)
    if whitening_weight is not None:
        with torch.no_grad():
            model.whiten.weight.copy_(whitening_weight)
    return model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
