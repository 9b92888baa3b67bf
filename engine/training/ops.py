"""The table of elementwise and reduction operations the network calls.

The network never calls GELU, the BatchNorm + GELU (+ residual, + the
squeeze-and-excitation gate's channel scaling), the squeeze-and-excitation gate
or the whitening covariance directly: it calls them through an `Ops` table, so `--kernels triton` swaps in
the hand-written Triton kernels without touching the model. Both tables use
`kernels`' functions; they differ only in the backend they ask for and in how
BatchNorm is applied.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

import kernels
from engine.options import KERNEL_CHOICES  # noqa: F401  (the engine's name for the menu)



@dataclass(frozen=True)
class Ops:
    name: str                      # "eager" or "triton"
    gelu: Callable                 # gelu(x)
    norm_gelu: Callable            # norm_gelu(x, batchnorm, residual=None, gate=None, pool=None)
                                   #   = GELU(BN(pool(x) * gate[:, :, None, None])) (+ residual)
    norm_silu: Callable            # norm_silu(x, batchnorm, pool=None) = SiLU(BN(pool(x)))
    squeeze_excite: Callable       # squeeze_excite(r, w1, b1, w2, b2) -> (N, C) gate
    patch_covariance: Callable     # patch_covariance(images, kernel_size) -> (mean, cov), float64


def _norm_gelu_eager(x, batchnorm, residual=None, gate=None, pool=None):
    if pool is not None:
        x = pool(x)
    if gate is not None:
        x = kernels.channel_scale_eager(x, gate)
    y = F.gelu(batchnorm(x))
    return y if residual is None else y + residual


def _norm_silu_eager(x, batchnorm, pool=None):
    return F.silu(batchnorm(x if pool is None else pool(x)))


def _batch_norm_activation_fused(x, batchnorm, activation, residual=None, gate=None, pool=None):
    """Training: BatchNorm with the batch's statistics, then the activation ("gelu" or "silu"),
    in our kernels (pool_batch_norm_gelu where a pool comes first with no residual or gate,
    else batch_norm_gelu), and the running statistics updated as nn.BatchNorm2d does."""
    if pool is not None and residual is None and gate is None:
        y, mean, var = kernels.pool_batch_norm_gelu(x, batchnorm.weight, batchnorm.bias, batchnorm.eps,
                                                    backend="triton", activation=activation)
    else:
        x = x if pool is None else pool(x)
        y, mean, var = kernels.batch_norm_gelu(x, batchnorm.weight, batchnorm.bias, batchnorm.eps, residual,
                                               gate, backend="triton", activation=activation)
    with torch.no_grad():
        count = y.numel() // y.shape[1]
        unbiased = var * (count / max(count - 1, 1))
        batchnorm.running_mean.lerp_(mean.to(batchnorm.running_mean.dtype), batchnorm.momentum)
        batchnorm.running_var.lerp_(unbiased.to(batchnorm.running_var.dtype), batchnorm.momentum)
    return y


def _norm_silu_fused(x, batchnorm, pool=None):
    """SiLU(BN(pool(x))): in training our kernels (the pool folded in, as for GELU); in eval
    mode plain PyTorch with the running statistics (Inductor fuses the apply and the SiLU)."""
    if batchnorm.training:
        return _batch_norm_activation_fused(x, batchnorm, "silu", pool=pool)
    return _norm_silu_eager(x, batchnorm, pool)


def _norm_gelu_fused(x, batchnorm, residual=None, gate=None, pool=None):
    """BatchNorm with exact training-mode batch statistics (or running statistics in
    eval mode), but the gate, normalise-and-shift, GELU and residual add in one kernel; in
    training, its backward (through the batch statistics and the gate) in two passes of ours.
    A 2x2 max-pool before it (`pool`, the network's MaxPool2x2) is folded into those passes
    in training (pool_batch_norm_gelu) where there is no residual or gate."""
    if batchnorm.training:
        return _batch_norm_activation_fused(x, batchnorm, "gelu", residual, gate, pool)
    if pool is not None:
        x = pool(x)
    if gate is not None:
        x = kernels.channel_scale(x, gate, backend="triton")
    scale = batchnorm.weight.float() * torch.rsqrt(batchnorm.running_var.float() + batchnorm.eps)
    shift = batchnorm.bias.float() - batchnorm.running_mean.float() * scale
    return kernels.affine_gelu(x, scale, shift, residual, backend="triton")


def make_ops(kind: str) -> Ops:
    if kind not in KERNEL_CHOICES:
        raise ValueError(f"unknown kernels {kind!r}; choose one of {', '.join(KERNEL_CHOICES)}")
    backend = kind
    return Ops(
        name=kind,
        gelu=partial(kernels.gelu, backend=backend),
        norm_gelu=_norm_gelu_eager if kind == "eager" else _norm_gelu_fused,
        norm_silu=_norm_silu_eager if kind == "eager" else _norm_silu_fused,
        squeeze_excite=partial(kernels.squeeze_excite, backend=backend),
        patch_covariance=partial(kernels.patch_covariance, backend=backend),
    )
