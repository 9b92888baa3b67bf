"""kernels.pool_batch_norm_gelu: 2x2 max-pool, then training-mode BatchNorm + GELU, with the
pool folded into the passes around it. Triton against the eager twin (max_pool2d, then
batch_norm_gelu's twin): output, batch statistics and the gradients of x, weight and bias."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernel_checks import (DEVICE, DTYPES, U32, poisoned_kernel_outputs, assert_rounded_once, check_against_eager,  # noqa: F401
                           make, run, uniform)

EPS = 1e-5


def pool_batch_norm_gelu_output(x, weight, bias, backend=None, activation="gelu"):
    """The output alone (check_against_eager differentiates one tensor)."""
    if backend is None:                                   # the float64 twin, called as twin(*inputs)
        return kernels.pool_batch_norm_gelu_eager(x, weight, bias, EPS, activation)[0]
    return kernels.pool_batch_norm_gelu(x, weight, bias, EPS, backend=backend, activation=activation)[0]


def pool_batch_norm_silu_output(x, weight, bias, backend=None):
    return pool_batch_norm_gelu_output(x, weight, bias, backend, activation="silu")


def _inputs(shape, dtype, channels_last):
    c = shape[1]
    return [make(shape, dtype, channels_last, scale=2.0, shift=0.5),
            make((c,), torch.float32, scale=0.3, shift=1.0), make((c,), torch.float32, scale=0.5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(2, 16, 7, 7), (3, 40, 6, 5), (2, 130, 4, 4), (5, 3, 2, 3)], ids=str)
def test_pool_batch_norm_gelu(shape, channels_last, dtype):
    """Even and odd sizes (an odd last row or column is dropped and gets a zero gradient),
    more channels than one column block, and a single pooled pixel per sample."""
    inputs = _inputs(shape, dtype, channels_last)
    pooled_shape = (shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    g = torch.randn(pooled_shape, device=DEVICE, dtype=dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    y, dx, _, _ = check_against_eager(pool_batch_norm_gelu_output, pool_batch_norm_gelu_output, inputs, g, dtype,
                                      reduced=(2, 3), what=f"pool_batch_norm_gelu{shape}")
    if shape[1] > 1 and pooled_shape[2] * pooled_shape[3] > 1:   # (a 1x1 map is both layouts)
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last, "output keeps x's format"
    assert dx.stride() == inputs[0].stride(), "the gradient keeps x's memory format"
    _, mean, var = kernels.pool_batch_norm_gelu(*inputs, EPS, backend="triton")
    expected_var, expected_mean = torch.var_mean(F.max_pool2d(inputs[0].detach(), 2).float(), dim=(0, 2, 3),
                                                 correction=0)
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(var, expected_var)
    assert not mean.requires_grad and not var.requires_grad


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gradient_goes_to_the_first_maximum_and_dropped_edges_get_zero(channels_last):
    """Known answers: whole windows of equal values (max_pool2d's gradient goes to the
    first of them), a winner in each of the four places, and odd edges; the gradient of
    x is zero wherever max_pool2d's is, and equals it where not."""
    n, c, h, w = 2, 3, 5, 7
    x = torch.zeros(n, c, h, w, device=DEVICE)
    x[0, 0] = 1.0                                                     # every window tied
    x[0, 1, 0::2, 0::2], x[0, 2, 0::2, 1::2] = 2.0, 2.0               # winners top-left, top-right
    x[1, 0, 1::2, 0::2], x[1, 1, 1::2, 1::2] = 2.0, 2.0               # bottom-left, bottom-right
    x[1, 2] = torch.arange(h * w, device=DEVICE).reshape(h, w).float() % 3   # mixed, with ties
    x[:, :, h - 1, :], x[:, :, :, w - 1] = 9.0, 9.0                   # largest, but dropped
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, bias = torch.ones(c, device=DEVICE), torch.zeros(c, device=DEVICE)
    g = torch.randn(n, c, h // 2, w // 2, device=DEVICE)
    _, (dx,) = run(lambda x: kernels.pool_batch_norm_gelu(x, weight, bias, EPS, backend="triton")[0],
                   [x.requires_grad_(True)], g)
    _, (dx_ref,) = run(lambda x: kernels.pool_batch_norm_gelu_eager(x, weight, bias, EPS)[0], [x], g)
    assert torch.equal(dx == 0, dx_ref == 0), "the gradient must land where max_pool2d's does"
    assert (dx[:, :, h - 1, :] == 0).all() and (dx[:, :, :, w - 1] == 0).all(), "dropped edges get 0"
    torch.testing.assert_close(dx, dx_ref)


def test_statistics_of_a_map_far_from_zero():
    """Mean 1000, spread 1, float32: sums of squares (10**6 per element, float32 unit 0.06)
    would lose the variance entirely; the kernel's merged per-tile deviations keep it to
    float32's precision of the data. Enough pixels that each program merges many tiles."""
    x = torch.randn(8, 8, 40, 40, device=DEVICE, dtype=torch.float64) + 1000.0
    pooled = F.max_pool2d(x, 2)
    expected_var, expected_mean = torch.var_mean(pooled, dim=(0, 2, 3), correction=0)
    weight, bias = torch.ones(8, device=DEVICE), torch.zeros(8, device=DEVICE)
    _, mean, var = kernels.pool_batch_norm_gelu(x.float().contiguous(memory_format=torch.channels_last), weight,
                                                bias, EPS, backend="triton")
    torch.testing.assert_close(mean.double(), expected_mean, rtol=0, atol=1e-3)
    torch.testing.assert_close(var.double(), expected_var, rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(2, 16, 7, 7), (3, 40, 6, 5)], ids=str)
def test_pool_batch_norm_silu(shape, channels_last, dtype):
    """activation="silu" (hiverge's groups): SiLU in the forward and in the pass that
    writes the pool's input gradient, against max_pool2d and the twin with F.silu."""
    inputs = _inputs(shape, dtype, channels_last)
    g = torch.randn((shape[0], shape[1], shape[2] // 2, shape[3] // 2), device=DEVICE, dtype=dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    check_against_eager(pool_batch_norm_silu_output, pool_batch_norm_silu_output, inputs, g, dtype, reduced=(2, 3),
                        what=f"pool_batch_norm_gelu{shape} activation=silu")


@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_half_dx_rounds_once(channels_last, activation):
    """Known answers for float16: the gradient at each winner, computed in float32 and
    rounded once at the store, equals the exact (float64) gradient rounded once wherever
    float32's own error cannot reach a rounding midpoint (bound as in batch_norm_gelu's
    test); the output likewise. Compared at the winners only: elsewhere both are 0."""
    shape = (2, 8, 9, 8)
    x = uniform(shape, -2.0, 3.0, torch.float16)
    weight, bias = uniform((8,), 0.5, 1.5, torch.float32), uniform((8,), -0.5, 0.5, torch.float32)
    dy = uniform((2, 8, 4, 4), 0.5, 2.0, torch.float16)
    if channels_last:
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y, _, _ = kernels.pool_batch_norm_gelu(x, weight, bias, EPS, backend="triton", activation=activation)
    dx, = torch.autograd.grad(y, [x], dy)
    act = F.silu if activation == "silu" else F.gelu

    def exact(dtype):
        x_ = x.detach().to(dtype).requires_grad_(True)
        out = act(F.batch_norm(F.max_pool2d(x_, 2), None, None, weight.to(dtype), bias.to(dtype), training=True,
                               eps=EPS))
        grad, = torch.autograd.grad(out, [x_], dy.to(dtype))
        return grad, out
    dx64, y64 = exact(torch.float64)
    dx32, y32 = exact(torch.float32)
    won = dx64 != 0
    pooled = F.max_pool2d(x.detach().double(), 2)
    scale = weight.double() / torch.sqrt(pooled.var((0, 2, 3), unbiased=False) + EPS)
    terms = (dy.double().abs() * scale[:, None, None]).repeat_interleave(2, 2).repeat_interleave(2, 3)
    terms = F.pad(terms, (0, shape[3] % 2, 0, shape[2] % 2)) + dx64.abs()
    # Decided shares over 25 seeds, both layouts and activations: 0.88-0.98 (dx at the winners and
    # the output); at least 80% decided, so that no seed fails for want of known answers.
    assert_rounded_once(dx[won], dx64[won], (8 * (dx32.double() - dx64).abs() + 16 * U32 * terms)[won],
                        "pool_batch_norm_gelu float16 dx", least=0.8)
    assert (dx[~won] == 0).all(), "only winners get a gradient"
    assert_rounded_once(y, y64, 8 * (y32.double() - y64).abs() + 16 * U32 * (y64.abs() + 1),
                        "pool_batch_norm_gelu float16 output", least=0.8)


def test_pool_batch_norm_gelu_rejects_bad_input():
    x = torch.randn(2, 4, 4, 4, device=DEVICE)
    w = torch.ones(4, device=DEVICE)
    f = kernels.pool_batch_norm_gelu
    with pytest.raises(ValueError, match="eps"):
        f(x, w, w, 0.0, backend="triton")
    with pytest.raises(ValueError, match="shape"):
        f(x, torch.ones(5, device=DEVICE), w, EPS, backend="triton")
    with pytest.raises(ValueError, match="at least 2"):
        f(x[:, :, :1].contiguous(), w, w, EPS, backend="triton")
    with pytest.raises(ValueError, match="at least 2"):
        f(x[:0], w, w, EPS, backend="triton")
    with pytest.raises(ValueError, match="channels_last"):
        f(x[:, :, :, ::2].transpose(2, 3), w, w, EPS, backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        f(x.int(), w, w, EPS, backend="triton")
    with pytest.raises(ValueError, match="activation must be one of 'gelu', 'silu', got 'SiLU'"):
        f(x, w, w, EPS, backend="triton", activation="SiLU")
