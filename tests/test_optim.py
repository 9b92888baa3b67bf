"""The optimizer updates: Nesterov SGD against torch.optim.SGD, Muon against a plain
float64 formula written here from the recipe's description, and the group bookkeeping."""
import math

import numpy as np
import pytest
import torch

from engine.training.optim import (NEWTON_SCHULZ_COEFFICIENTS, Group, Optimizers, muon_, nesterov_sgd_, newton_schulz,
                          update_groups_)


def sgd_group(params, lr, weight_decay, name="g", schedule=lambda step: 1.0):
    return Group(name, params, "sgd", lr, 0.85, weight_decay, schedule=schedule)


def test_nesterov_update_matches_torch_sgd():
    torch.manual_seed(1)
    params = [torch.randn(5, 3), torch.randn(7)]
    reference = [p.clone().requires_grad_() for p in params]
    optimizer = torch.optim.SGD(reference, lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.2)
    ours = [p.clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    for _ in range(4):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(reference, grads):
            p.grad = g.clone()
        optimizer.step()
        nesterov_sgd_(ours, [g.clone() for g in grads], buffers, torch.tensor(0.1), 0.2, 0.85)
        for a, b in zip(reference, ours):
            torch.testing.assert_close(a.detach(), b, rtol=1e-6, atol=1e-6)


def test_one_update_call_for_every_group_matches_torch_sgd_param_groups():
    """Optimizers.step (what the trainer calls, compiled as one graph with --compile): groups
    with their own lr and weight decay, as torch.optim.SGD's param groups, gradients dropped."""
    torch.manual_seed(3)
    groups = [[torch.randn(4, 2), torch.randn(3)], [torch.randn(6)]]
    settings = [(0.1, 0.2), (0.7, 0.01)]
    reference = [[p.clone().requires_grad_() for p in g] for g in groups]
    optimizer = torch.optim.SGD([{"params": r, "lr": lr, "weight_decay": wd}
                                 for r, (lr, wd) in zip(reference, settings)], momentum=0.85, nesterov=True)
    ours = Optimizers([sgd_group([p.clone().requires_grad_() for p in g], lr, wd)
                       for g, (lr, wd) in zip(groups, settings)])
    for _ in range(3):
        for r, o in zip(reference, ours.groups):
            for a, b in zip(r, o.params):
                a.grad = torch.randn_like(a)
                b.grad = a.grad.clone()
        optimizer.step()
        ours.step()
        for r, o in zip(reference, ours.groups):
            assert all(p.grad is None for p in o.params)
            for a, b in zip(r, o.params):
                torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-6)


# ---- Muon, against the recipe's formula in float64 ----

def newton_schulz_float64(d: np.ndarray, steps: int) -> np.ndarray:
    a, b, c = 3.4445, -4.7750, 2.0315
    x = d / (np.linalg.norm(d) + 1e-7)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def muon_float64(w, g, buffer, lr, momentum, steps):
    """buffer = m buffer + g; d = g + m buffer; w *= sqrt(rows) / ||w||_F; w -= lr NS(d as (rows, rest))."""
    buffer = momentum * buffer + g
    d = g + momentum * buffer
    w = w * math.sqrt(w.shape[0]) / np.linalg.norm(w)
    w = w - lr * newton_schulz_float64(d.reshape(d.shape[0], -1), steps).reshape(w.shape)
    return w, buffer


@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (4, 6, 3, 3), (30, 2, 1, 1)])   # wide, wide, tall
def test_muon_matches_the_float64_formula(shape):
    """In float64 the engine's Muon is the formula to rounding; in bfloat16 (the recipe) within
    what bfloat16's 8-bit significand allows over 3 iterations."""
    torch.manual_seed(0)
    w0 = torch.randn(shape, dtype=torch.float64)
    grads = [torch.randn(shape, dtype=torch.float64) for _ in range(3)]
    expected_w, expected_buffer = w0.numpy(), np.zeros(shape)
    for g in grads:
        expected_w, expected_buffer = muon_float64(expected_w, g.numpy(), expected_buffer, 0.24, 0.6, 3)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.bfloat16, 3e-2)):
        w, buffer = w0.clone(), torch.zeros(shape, dtype=torch.float64)
        for g in grads:
            muon_([w], [g.clone()], [buffer], torch.tensor(0.24, dtype=torch.float64), 0.6, 3,
                  NEWTON_SCHULZ_COEFFICIENTS, dtype)
        error = np.linalg.norm(w.numpy() - expected_w) / np.linalg.norm(expected_w)
        assert error < tolerance, f"{dtype}: relative error {error:.3g}"
        np.testing.assert_allclose(buffer.numpy(), expected_buffer, rtol=1e-12)


def test_newton_schulz_works_on_the_transpose_of_a_tall_matrix_and_nearly_orthogonalises():
    torch.manual_seed(1)
    tall = torch.randn(12, 5, dtype=torch.float64)
    torch.testing.assert_close(newton_schulz(tall, 3, dtype=torch.float64),
                               newton_schulz(tall.T.contiguous(), 3, dtype=torch.float64).T)
    singular_values = torch.linalg.svdvals(newton_schulz(tall, 5, dtype=torch.float64))
    assert singular_values.min() > 0.5 and singular_values.max() < 1.5    # pushed towards 1 (0.7..1.2)
    assert newton_schulz(tall, 3).dtype == torch.bfloat16


def test_update_groups_applies_sgd_and_muon_groups_in_one_call():
    torch.manual_seed(4)
    filters, bias = torch.randn(6, 2, 3, 3), torch.randn(6)
    optimizers = Optimizers([sgd_group([bias], 0.05, 0.1, "bias"),
                             Group("filters", [filters], "muon", 0.24, 0.6, newton_schulz_steps=3)])
    filters_grad, bias_grad = torch.randn_like(filters), torch.randn_like(bias)
    expected_filters, expected_bias = filters.clone(), bias.clone()
    muon_([expected_filters], [filters_grad.clone()], [torch.zeros_like(filters)], torch.tensor(0.24), 0.6, 3)
    nesterov_sgd_([expected_bias], [bias_grad.clone()], [torch.zeros_like(bias)], torch.tensor(0.05), 0.1, 0.85)
    filters.grad, bias.grad = filters_grad, bias_grad
    optimizers.step(update_groups_)
    assert torch.equal(filters, expected_filters) and torch.equal(bias, expected_bias)
    assert filters.grad is None and bias.grad is None


def test_reset_zeroes_momentum_and_takes_new_schedules_on_the_same_tensors():
    params = [torch.randn(3)]
    optimizers = Optimizers([sgd_group(params, 0.1, 0.0)])
    params[0].grad = torch.ones(3)
    optimizers.step()
    kept = [t.data_ptr() for t in optimizers.state_tensors()]
    assert optimizers.buffers[0][0].abs().sum() > 0
    optimizers.reset([sgd_group(params, 0.3, 0.0, schedule=lambda step: 0.5 ** step)])
    assert [t.data_ptr() for t in optimizers.state_tensors()] == kept
    assert optimizers.buffers[0][0].abs().sum() == 0 and optimizers.lrs[0].item() == pytest.approx(0.3)
    optimizers.set_step(2)
    assert optimizers.lrs[0].item() == pytest.approx(0.075)
    with pytest.raises(ValueError, match="same parameters"):
        optimizers.reset([sgd_group([torch.randn(3)], 0.3, 0.0)])


def test_a_group_refuses_an_unknown_rule_and_a_muon_group_without_iterations_or_rescaling():
    with pytest.raises(ValueError, match="unknown update rule"):
        Group("g", [], "adam", 0.1, 0.9)
    with pytest.raises(ValueError, match="at least one Newton-Schulz step"):
        Group("g", [], "muon", 0.1, 0.9, newton_schulz_steps=0)
    with pytest.raises(ValueError, match="rescales every k >= 1"):
        Group("g", [], "muon", 0.1, 0.9, newton_schulz_steps=3, rescale_every=0)


def per_matrix_newton_schulz_float64(matrix, steps, coefficients, eps):
    """The formula, one matrix at a time, in float64 (the reference for the batched form)."""
    a, b, c = coefficients
    x = matrix.double() / (matrix.double().norm() + eps)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("coefficients,eps", [((3.4445, -4.7750, 2.0315), 1e-7), ((3.4576, -4.7391, 2.0843), 1e-5)])
def test_the_batched_newton_schulz_computes_each_matrix_as_alone(coefficients, eps):
    """The recipes' filter shapes (wide, tall, square, columns not a multiple of 16), padded
    into one stack: each result is the per-matrix float64 formula's, in float64 to rounding
    and in bfloat16 to bfloat16's precision."""
    from engine.training.optim import newton_schulz_batched, padded_stack
    torch.manual_seed(0)
    shapes = [(8, 24 * 9), (8, 72), (32, 72), (32, 288), (40, 7), (16, 16)]
    matrices = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    stack = padded_stack(matrices, 16)
    assert stack.shape == (6, 40, 288)
    expected = [per_matrix_newton_schulz_float64(m, 3, coefficients, eps) for m in matrices]
    for got, want, m in zip(newton_schulz_batched(matrices, 3, coefficients, torch.float64, eps), expected, matrices):
        assert got.shape == m.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(newton_schulz_batched(matrices, 3, coefficients, torch.bfloat16, eps), expected):
        torch.testing.assert_close(got.double(), want, rtol=0.05, atol=0.03)


def test_muon_rescales_only_where_told_and_decays_after_the_step():
    """rescale 0: the weight keeps its norm before the step; rescale 1: it is set to norm
    sqrt(rows) first. weight_decay: p *= 1 - lr * wd after the step."""
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64) * 3
    g = torch.randn_like(w)
    lr = torch.tensor(0.1, dtype=torch.float64)
    kept, rescaled, decayed = w.clone(), w.clone(), w.clone()
    muon_([kept], [g.clone()], [torch.zeros_like(w)], lr, 0.6, 3, dtype=torch.float64, rescale=torch.tensor(0.0))
    muon_([rescaled], [g.clone()], [torch.zeros_like(w)], lr, 0.6, 3, dtype=torch.float64, rescale=torch.tensor(1.0))
    muon_([decayed], [g.clone()], [torch.zeros_like(w)], lr, 0.6, 3, dtype=torch.float64, rescale=torch.tensor(0.0),
          weight_decay=0.5)
    step = per_matrix_newton_schulz_float64(1.6 * g.reshape(4, -1), 3, (3.4445, -4.7750, 2.0315), 1e-7).view_as(w)
    torch.testing.assert_close(kept, w - 0.1 * step)
    torch.testing.assert_close(rescaled, w * (2.0 / w.norm()) - 0.1 * step)
    torch.testing.assert_close(decayed, (w - 0.1 * step) * (1 - 0.1 * 0.5))


def test_a_group_rescaling_every_fourth_step_counts_from_one():
    group = Group("g", [torch.zeros(2, 2, 1, 1)], "muon", 0.1, 0.5, newton_schulz_steps=1, rescale_every=4)
    assert [s for s in range(12) if group.rescales_at(s)] == [3, 7, 11]
    optimizers = Optimizers([group])
    optimizers.set_step(2)
    assert optimizers.rescales[0].item() == 0.0
    optimizers.set_step(3)
    assert optimizers.rescales[0].item() == 1.0
