"""Whitening initialisation of the first convolution (docs/recipe.md, "Whitening").

Patch statistics are streamed: the mean and covariance of all k x k patches of
the unpadded training images, accumulated chunk by chunk (memory bounded
whatever N is) and merged exactly in float64 (Chan et al.'s pairwise update).
The seed recipe decomposes that one covariance; the release instead averaged
per-chunk eigenvectors, whose signs are arbitrary: the single decomposition is
our deliberate improvement. The record recipe decomposes the uncentered second
moment, derived here from the same mean and covariance.
"""
from __future__ import annotations

from typing import Callable

import torch


def streamed_patch_statistics(images: torch.Tensor, kernel_size: int, chunk: int,
                              patch_covariance: Callable):
    """Mean (D,) and unbiased covariance (D, D), float64, of every stride-1 patch of
    `images` (N, C, H, W), computed `chunk` images at a time."""
    total, mean, scatter = 0, None, None
    patches_per_image = (images.shape[2] - kernel_size + 1) * (images.shape[3] - kernel_size + 1)
    for start in range(0, images.shape[0], chunk):
        block = images[start:start + chunk]
        count = block.shape[0] * patches_per_image
        block_mean, block_cov = patch_covariance(block, kernel_size)
        block_scatter = block_cov * (count - 1)
        if mean is None:
            total, mean, scatter = count, block_mean, block_scatter
            continue
        delta = block_mean - mean
        merged = total + count
        mean = mean + delta * (count / merged)
        scatter = scatter + block_scatter + torch.outer(delta, delta) * (total * count / merged)
        total = merged
    return mean, scatter / (total - 1)


def patch_count(images: torch.Tensor, kernel_size: int) -> int:
    """Stride-1 k x k patches in (N, C, H, W) images."""
    return images.shape[0] * (images.shape[2] - kernel_size + 1) * (images.shape[3] - kernel_size + 1)


def uncentered_second_moment(mean: torch.Tensor, covariance: torch.Tensor, count: int) -> torch.Tensor:
    """(P^T P) / count of `count` patches P from their mean and unbiased covariance:
    covariance * (count - 1) / count + mean mean^T."""
    return covariance * ((count - 1) / count) + torch.outer(mean, mean)


def whitening_filters(covariance: torch.Tensor, channels: int, kernel_size: int, eps: float):
    """Filters (D, C, k, k): filter i = eigenvector i / sqrt(eigenvalue i + eps), eigenvalues
    in descending order. Returns (filters, eigenvalues), both float64."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)   # descending
    filters = eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]
    return filters.reshape(-1, channels, kernel_size, kernel_size), eigenvalues


def whitening_weight(images: torch.Tensor, kernel_size: int, eps: float, chunk: int,
                     patch_covariance: Callable) -> torch.Tensor:
    """The frozen whitening conv's weight for normalised training images (N, C, H, W)."""
    _, covariance = streamed_patch_statistics(images, kernel_size, chunk, patch_covariance)
    filters, _ = whitening_filters(covariance, images.shape[1], kernel_size, eps)
    return filters
