"""The optimizers the recipes use, written for torch.compile.

A recipe describes its parameter groups (`Group`: a name, the parameters, an
update rule and its settings, and a learning-rate schedule); `Optimizers`
keeps their state tensors (momentum buffers and a 0-dim learning rate per
group) and applies one step of every group in a single `update_groups_` call,
which `Trainer` compiles: the whole update of a step is one graph, and since
learning rates are tensors written in place, one compiled graph serves every
step and every run.

Two update rules:
  * Nesterov SGD, the arithmetic of torch.optim.SGD(nesterov=True) with weight
    decay added to the gradient (tests compare the two);
  * Muon: Nesterov momentum, each weight rescaled to Frobenius norm sqrt(rows)
    (every step, or every k-th), then the step along the momentum direction
    orthogonalised by a few Newton-Schulz iterations, and an optional decay
    p *= 1 - lr * weight_decay. The iterations run batched: every direction of a
    group reshaped to (rows, in*k*k), zero-padded to one shape and stacked into one
    3-D tensor (zero rows and columns stay zero, so each matrix gets what it would
    alone); tests/test_optim.py holds it to the per-matrix float64 formula.
torch.optim.Muon does not fit the record recipe: it takes only 2-D parameters
(ours are 4-D conv filters, reshaped to (out, in*k*k) for the iteration only)
and it has no per-step weight rescaling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def nesterov_sgd_(params, grads, buffers, lr, weight_decay: float, momentum: float):
    """One SGD step with Nesterov momentum over lists of tensors: g += weight_decay * p;
    buffer = momentum * buffer + g; p -= lr * (g + momentum * buffer). `lr` is a 0-dim tensor."""
    grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, grads)
    torch._foreach_add_(grads, buffers, alpha=momentum)
    torch._foreach_mul_(grads, lr)
    torch._foreach_sub_(params, grads)


def newton_schulz(matrix: torch.Tensor, steps: int, coefficients=NEWTON_SCHULZ_COEFFICIENTS,
                  dtype: torch.dtype = torch.bfloat16, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix with `matrix`'s singular vectors (singular values
    pushed towards 1), in `dtype`: X = M / (||M|| + eps), working on the transpose when M has
    more rows than columns; `steps` times A = X X^T, B = b A + c A A, X = a X + B X.
    `matrix` may be a stack (batch, rows, columns): each is normalised on its own."""
    a, b, c = coefficients
    x = matrix.to(dtype)
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + eps)
    tall = matrix.shape[-2] > matrix.shape[-1]
    if tall:
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if tall else x


def padded_stack(matrices: list, multiple: int = 1) -> torch.Tensor:
    """The matrices zero-padded to the largest rows and the largest columns (rounded up to
    `multiple`), stacked into one (len, rows, columns) tensor."""
    rows = max(m.shape[0] for m in matrices)
    columns = -(-max(m.shape[1] for m in matrices) // multiple) * multiple
    return torch.stack([torch.nn.functional.pad(m, (0, columns - m.shape[1], 0, rows - m.shape[0]))
                        for m in matrices])


def newton_schulz_batched(matrices: list, steps: int, coefficients=NEWTON_SCHULZ_COEFFICIENTS,
                          dtype: torch.dtype = torch.bfloat16, eps: float = 1e-7, multiple: int = 16) -> list:
    """newton_schulz of each matrix, computed as one padded 3-D stack, cut back to each shape."""
    stacked = newton_schulz(padded_stack(matrices, multiple), steps, coefficients, dtype, eps)
    return [x[:m.shape[0], :m.shape[1]] for x, m in zip(stacked, matrices)]


def muon_(params, grads, buffers, lr, momentum: float, steps: int, coefficients=NEWTON_SCHULZ_COEFFICIENTS,
          dtype: torch.dtype | None = torch.bfloat16, eps: float = 1e-7, weight_decay: float = 0.0,
          rescale: torch.Tensor | None = None):
    """One Muon step over lists of tensors (the first dimension of each is its rows):
    buffer = momentum * buffer + g; d = g + momentum * buffer; p *= sqrt(rows) / ||p|| (where
    the 0-dim `rescale` is nonzero, or always when it is None); p -= lr * newton_schulz(d as
    (rows, rest)), every matrix of the group in one batched iteration (in `dtype`; None: the
    parameters'); then p *= 1 - lr * weight_decay. `lr` is a 0-dim tensor."""
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, grads)
    directions = torch._foreach_add(grads, buffers, alpha=momentum)
    matrices = [d.reshape(d.shape[0], -1) for d in directions]
    updates = newton_schulz_batched(matrices, steps, coefficients, dtype or params[0].dtype, eps)
    for param, update in zip(params, updates):
        norm = param.norm(dtype=torch.promote_types(param.dtype, torch.float32))   # float16: in float32
        factor = math.sqrt(param.shape[0]) / norm
        param.mul_(factor if rescale is None else torch.where(rescale != 0, factor, torch.ones_like(factor)))
        param.sub_(update.view_as(param) * lr)
        if weight_decay:
            param.mul_(1 - lr * weight_decay)


def update_groups_(sgd_groups: list, muon_groups: list):
    """nesterov_sgd_ over every (params, grads, buffers, lr, weight_decay, momentum) and muon_
    over every (params, grads, buffers, lr, momentum, steps, settings, rescale): compiled, one
    graph per step (the rescale flag is a tensor: a step with and one without share it)."""
    for params, grads, buffers, lr, weight_decay, momentum in sgd_groups:
        nesterov_sgd_(params, grads, buffers, lr, weight_decay, momentum)
    for params, grads, buffers, lr, momentum, steps, settings, rescale in muon_groups:
        muon_(params, grads, buffers, lr, momentum, steps, rescale=rescale, **settings)


def constant(step: int) -> float:
    return 1.0


@dataclass(frozen=True)
class Group:
    """One parameter group as a recipe describes it. rule: "sgd" (Nesterov SGD with
    `weight_decay` added to the gradient) or "muon" (`newton_schulz_steps` iterations with
    `newton_schulz_coefficients` in `newton_schulz_dtype` (None: the parameters' dtype),
    the weights rescaled every `rescale_every`-th step counted from 1, and `weight_decay`
    as p *= 1 - lr * weight_decay after the step); lr at step s = peak_lr * schedule(s)."""
    name: str
    params: list
    rule: str
    peak_lr: float
    momentum: float
    weight_decay: float = 0.0
    newton_schulz_steps: int = 0
    schedule: Callable[[int], float] = constant
    newton_schulz_coefficients: tuple = NEWTON_SCHULZ_COEFFICIENTS
    newton_schulz_dtype: torch.dtype | None = torch.bfloat16
    newton_schulz_eps: float = 1e-7
    rescale_every: int = 1
    trains_until: int | None = None   # None, or the step from which lr is 0 for good: from there on
                                      # the group's parameters compute no gradient and get no update

    def __post_init__(self):
        if self.rule not in ("sgd", "muon"):
            raise ValueError(f"unknown update rule {self.rule!r}; choose sgd or muon")
        if self.rule == "muon" and (self.newton_schulz_steps <= 0 or self.rescale_every <= 0):
            raise ValueError("a muon group has at least one Newton-Schulz step and rescales every k >= 1 steps")

    def rescales_at(self, step: int) -> bool:
        """Whether a muon group rescales its weights at step `step` (0-based)."""
        return (step + 1) % self.rescale_every == 0

    def muon_settings(self) -> dict:
        return dict(coefficients=tuple(self.newton_schulz_coefficients), dtype=self.newton_schulz_dtype,
                    eps=self.newton_schulz_eps, weight_decay=self.weight_decay)

    def lr_at(self, step: int) -> float:
        return self.peak_lr * self.schedule(step)

    def trains_at(self, step: int) -> bool:
        """Whether the group still trains at step `step`: with a learning rate of 0 its step
        leaves the parameters exactly as they are, so after `trains_until` it is skipped."""
        return self.trains_until is None or step < self.trains_until


class Optimizers:
    """The state of every group of a network: momentum buffers and a 0-dim lr tensor each.
    `reset` starts a new run on the same tensors (what compiled code and CUDA graphs need)."""

    def __init__(self, groups: list[Group]):
        self.groups = list(groups)
        self.buffers = [[torch.zeros_like(p) for p in group.params] for group in self.groups]
        self.lrs = [torch.tensor(group.peak_lr, dtype=torch.float32,
                                 device=group.params[0].device if group.params else "cpu")
                    for group in self.groups]
        self.rescales = [torch.ones_like(lr) for lr in self.lrs]     # muon: rescale at this step (1) or not (0)

    def reset(self, groups: list[Group]):
        """New settings and schedules (the same parameters), zeroed momentum."""
        if [[id(p) for p in g.params] for g in groups] != [[id(p) for p in g.params] for g in self.groups]:
            raise ValueError("reset() needs groups over the same parameters in the same order")
        self.groups = list(groups)
        for buffers in self.buffers:
            for buffer in buffers:
                buffer.zero_()
        self.set_step(0)
        self.zero_grad()

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the update writes besides the parameters (marked static for CUDA graphs)."""
        return [b for buffers in self.buffers for b in buffers] + self.lrs + self.rescales

    def set_step(self, step: int):
        """Every group's learning rate at optimizer step `step` (0-based), written in place."""
        for group, lr, rescale in zip(self.groups, self.lrs, self.rescales):
            lr.fill_(group.lr_at(step))
            rescale.fill_(float(group.rescales_at(step)))
            self.set_trains(group, group.trains_at(step))

    @staticmethod
    def set_trains(group: Group, trains: bool):
        """A group past `trains_until` stops asking for gradients (the compiled step then has a
        second graph without them, which the warm-up compiles); the next run turns them back on."""
        for p in group.params:
            if p.requires_grad != trains:
                p.requires_grad_(trains)

    def train_all(self):
        """Every group's parameters ask for gradients again (the end of a run)."""
        for group in self.groups:
            self.set_trains(group, True)

    def lrs_at(self, step: int) -> dict:
        """{group name: learning rate} at `step`, computed on the host (no sync)."""
        return {group.name: group.lr_at(step) for group in self.groups}

    def arguments(self) -> tuple[list, list]:
        """What update_groups_ takes: the SGD groups' and the Muon groups' tuples."""
        sgd, muon = [], []
        for group, buffers, lr, rescale in zip(self.groups, self.buffers, self.lrs, self.rescales):
            if group.trains_until is not None and not all(p.requires_grad for p in group.params):
                continue          # stopped: its rate is 0 for good
            grads = [p.grad for p in group.params]
            if group.rule == "sgd":
                sgd.append((group.params, grads, buffers, lr, group.weight_decay, group.momentum))
            else:
                muon.append((group.params, grads, buffers, lr, group.momentum, group.newton_schulz_steps,
                             group.muon_settings(), rescale))
        return sgd, muon

    def step(self, update: Callable = update_groups_):
        """Apply `update` (update_groups_ or its compiled version), then drop the gradients."""
        with torch.no_grad():
            update(*self.arguments())
        self.zero_grad()

    def zero_grad(self):
        for group in self.groups:
            for p in group.params:
                p.grad = None
