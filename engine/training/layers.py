"""Building blocks the recipes' networks share."""
from __future__ import annotations

import torch
from torch import nn


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with its weight frozen at 1: only the bias trains (both recipes)."""

    def __init__(self, channels: int, eps: float, momentum: float):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)


def stage_outputs(stem_output: torch.Tensor, groups) -> list[torch.Tensor]:
    """[stem output, output of each group in turn]: a network's features, for its head
    (the last) and for shape checks (all)."""
    outputs = [stem_output]
    for group in groups:
        outputs.append(group(outputs[-1]))
    return outputs


def on_device(make_network, device, dtype, keep_float32=()) -> nn.Module:
    """`make_network()` built directly on `device` (initialised from that device's random
    stream: on a GPU no host-side initialisation or copy), cast to `dtype` and channels_last.
    Modules of the types in `keep_float32` stay float32."""
    with torch.device(device):
        model = make_network()
    model = model.to(device=device, dtype=dtype, memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, tuple(keep_float32)):
            module.float()
    return model
