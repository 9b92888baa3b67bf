"""Building blocks the recipes' networks share."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with its weight frozen at 1: only the bias trains (every recipe).

    Its num_batches_tracked (which a fixed momentum never reads) is not counted by each
    norm's forward, one tiny kernel launch each, but once per training step for the whole
    network by count_batches (the Trainer's step): one launch for all."""

    def __init__(self, channels: int, eps: float, momentum: float):
        super().__init__(channels, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)


def count_batches(model: nn.Module):
    """Adds 1 to the num_batches_tracked of every BatchNorm of `model` in training mode, in
    one launch: after each training forward."""
    counters = [m.num_batches_tracked for m in model.modules() if isinstance(m, BatchNorm) and m.training]
    if counters:
        torch._foreach_add_(counters, 1)


class MaxPool2x2(nn.Module):
    """2x2 max-pool, stride 2, odd edges dropped: nn.MaxPool2d(2)'s values and gradients.

    Eager PyTorch runs nn.MaxPool2d's own kernels. Under torch.compile the pool is written
    so that Inductor plans one pass each way: the forward keeps, per output, which of
    its four inputs won (int8, the first of equal maxima, as max_pool2d does), and the
    backward writes every input's gradient from that alone: the winner gets the output's
    gradient, the others (and a dropped odd edge) get 0. Inductor's own lowering of
    max_pool2d's backward zero-fills a float32 copy of the input, scatters into it and
    converts it back (three passes over the largest tensor in the network).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return _MaxPool2x2.apply(x)
        return F.max_pool2d(x, 2)


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        corner = [x[:, :, p:h // 2 * 2:2, q:w // 2 * 2:2] for p in (0, 1) for q in (0, 1)]   # row by row
        values = torch.maximum(torch.maximum(corner[0], corner[1]), torch.maximum(corner[2], corner[3]))
        winner = torch.where(corner[0] == values, 0, torch.where(corner[1] == values, 1,
                                                                 torch.where(corner[2] == values, 2, 3)))
        ctx.save_for_backward(winner.to(torch.int8))
        ctx.shape, ctx.channels_last = x.shape, x.is_contiguous(memory_format=torch.channels_last)
        # The maxima of x's strided corners come out in x's memory format. (No .contiguous()
        # here: under torch.compile, torch 2.11 then hands this backward a zero gradient.)
        return values

    @staticmethod
    def backward(ctx, grad):
        (winner,) = ctx.saved_tensors
        n, c, h, w = ctx.shape
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
        position = torch.arange(4, device=grad.device, dtype=torch.int8)
        if ctx.channels_last:           # built as (N, H, W, C), then viewed as channels_last (N, C, H, W)
            won = winner.permute(0, 2, 3, 1)[:, :, None, :, None, :] == position.view(2, 1, 2, 1)
            grad_in = torch.where(won, grad.permute(0, 2, 3, 1)[:, :, None, :, None, :], zero)
            grad_in = F.pad(grad_in.reshape(n, h // 2 * 2, w // 2 * 2, c), (0, 0, 0, w % 2, 0, h % 2))
            return grad_in.permute(0, 3, 1, 2)
        won = winner[:, :, :, None, :, None] == position.view(2, 1, 2)        # (N, C, H/2, 2, W/2, 2)
        grad_in = torch.where(won, grad[:, :, :, None, :, None], zero)
        return F.pad(grad_in.reshape(n, c, h // 2 * 2, w // 2 * 2), (0, w % 2, 0, h % 2))


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
