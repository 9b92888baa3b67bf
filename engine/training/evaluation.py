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


@torch.no_grad()
def evaluate(model: nn.Module, loader, views: Callable = flip_averaged_logits,
             forward: Callable | None = None) -> float:
    """Top-1 accuracy over every test image of `loader`, scoring `views(forward, images)`
    (forward: `model` unless given), with BatchNorm in eval mode."""
    forward = model if forward is None else forward
    was_training = model.training
    model.eval()
    correct = torch.zeros((), device=loader.labels.device, dtype=torch.int64)
    for images, labels in loader.epoch():
        correct += (views(forward, images).argmax(1) == labels).sum()
    model.train(was_training)
    return correct.item() / len(loader.labels)
