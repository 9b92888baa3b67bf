"""Test accuracy, and the test-time views the recipes build their evaluations from.

A view function takes `forward` (the network, or its compiled forward) and a
batch of test images and returns the logits the recipe scores. The recipes
choose and combine them (engine/recipes/*.py: `evaluation_views`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def plain_logits(forward: Callable, images: torch.Tensor) -> torch.Tensor:
    return forward(images)


def flip_averaged_logits(forward: Callable, images: torch.Tensor) -> torch.Tensor:
    """The batch and its mirror image through the network together, logits averaged 50/50."""
    logits = forward(torch.cat([images, images.flip(-1)]))
    return 0.5 * (logits[:len(images)] + logits[len(images):])


def least_confident(logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the round(fraction * N) rows whose highest softmax probability is lowest."""
    count = round(fraction * len(logits))
    confidence = logits.float().softmax(1).amax(1)
    return torch.topk(confidence, count, largest=False, sorted=True).indices


def confidence_selected(views: Callable, fraction: float, batch_size: int) -> Callable:
    """A whole-set view: plain logits for every test image (in batches), then `views` for the
    `fraction` least confident images only (in batches), their logits replaced by those."""
    def in_batches(view: Callable, forward: Callable, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([view(forward, images[start:start + batch_size]) for start in range(0, len(images), batch_size)])

    def selected_views(forward: Callable, images: torch.Tensor) -> torch.Tensor:
        logits = in_batches(plain_logits, forward, images)
        chosen = least_confident(logits, fraction)
        if len(chosen):
            better = in_batches(views, forward, images[chosen].contiguous(memory_format=torch.channels_last))
            logits = logits.index_copy(0, chosen, better.to(logits.dtype))
        return logits
    selected_views.whole_set = True        # evaluate() hands it the whole test set at once
    return selected_views


@torch.no_grad()
def evaluate(model: nn.Module, loader, views: Callable = flip_averaged_logits,
             forward: Callable | None = None) -> float:
    """Top-1 accuracy over every test image of `loader`, scoring `views(forward, images)`
    (forward: `model` unless given), with BatchNorm in eval mode. A view marked `whole_set`
    (confidence_selected) gets every test image at once and batches them itself."""
    forward = model if forward is None else forward
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=loader.labels.device, dtype=torch.int64)
    if getattr(views, "whole_set", False):
        images = loader.images.contiguous(memory_format=torch.channels_last)
        correct += (views(forward, images).argmax(1) == loader.labels).sum()
    else:
        for images, labels in loader.epoch():
            correct += (views(forward, images).argmax(1) == labels).sum()
    model.train(was_training)
    return correct.item() / len(loader.labels)
