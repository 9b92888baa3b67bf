"""kernels.affine_gelu: GELU(x*scale[c] + shift[c]) (+ residual), Triton against eager,
output and the gradients of x, scale, shift and residual."""
import math

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernel_checks import (DEVICE, DTYPES, U32, poisoned_kernel_outputs, assert_rounded_once, as_f64, run, uniform,  # noqa: F401
                           check_against_eager, make)

SHAPES = [
    *[pytest.param(shape, marks=pytest.mark.slow, id=str(shape)) for shape in [(2, 32, 31, 31), (2, 128, 15, 15), (2, 256, 7, 7)]], (2, 512, 3, 3),   # the network's maps
    # (the larger maps: the full suite only, as pytest -m slow)
    (1, 3, 3, 3), (3, 40, 5, 7), (1, 130, 3, 3),                          # odd ones
]


def _inputs(shape, dtype, channels_last, residual, param_dtype=None, residual_cl=None):
    c = shape[1]
    param_dtype = param_dtype or dtype
    x = make(shape, dtype, channels_last)
    scale = make((c,), param_dtype, scale=0.5, shift=1.0)
    shift = make((c,), param_dtype, scale=0.5)
    res = None
    if residual:
        res = make(shape, dtype, channels_last if residual_cl is None else residual_cl)
    return [x, scale, shift, res]


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_affine_gelu(shape, channels_last, dtype, residual):
    inputs = _inputs(shape, dtype, channels_last, residual)
    g = torch.randn(shape, device=DEVICE, dtype=dtype)
    # results: output, dx, dscale, dshift[, dresidual]; dscale and dshift are sums.
    y = check_against_eager(kernels.affine_gelu, kernels.affine_gelu_eager, inputs, g, dtype, reduced=(2, 3),
                            what=f"affine_gelu{shape}")[0]
    assert y.stride() == inputs[0].stride(), "output must keep x's memory format"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_affine_gelu_float32_params(channels_last, dtype):
    """The engine's case: float32 scale/shift (from BatchNorm statistics) beside a half x,
    residual in the other memory format; gradients come back in each input's dtype."""
    shape = (2, 40, 7, 7)
    inputs = _inputs(shape, dtype, channels_last, True, param_dtype=torch.float32,
                     residual_cl=not channels_last)
    g = torch.randn(shape, device=DEVICE, dtype=dtype)
    res = check_against_eager(kernels.affine_gelu, kernels.affine_gelu_eager, inputs, g, dtype, reduced=(2, 3))
    assert [t.dtype for t in res] == [dtype, dtype, torch.float32, torch.float32, dtype]


def test_affine_gelu_rejects_bad_input():
    x = torch.randn(2, 4, 3, 3, device=DEVICE)
    s = torch.ones(4, device=DEVICE)
    f = kernels.affine_gelu
    with pytest.raises(ValueError, match="dimensions"):
        f(x[0], s, s, backend="triton")
    with pytest.raises(ValueError, match="shape"):
        f(x, torch.ones(5, device=DEVICE), s, backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        f(x.double(), s, s, backend="triton")
    with pytest.raises(TypeError, match="residual"):
        f(x, s, s, residual=x.half(), backend="triton")
    with pytest.raises(ValueError, match="residual"):
        f(x, s, s, residual=x[:1], backend="triton")
    with pytest.raises(ValueError, match="contiguous"):
        f(x[:, :, :, :2], s[:3].repeat(2)[:4], s, backend="triton")
    with pytest.raises(ValueError, match="neither contiguous"):
        f(x.transpose(2, 3), s, s, backend="triton")
    with pytest.raises(ValueError, match="meta"):
        f(x, s.to("meta"), s, backend="triton")


FUNCTION_ULPS = 4     # erf, exp: at most this many units of roundoff of their result


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("param_dtype", ["same", torch.float32], ids=["params-as-x", "float32-params"])
@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.slow, id=str(torch.bfloat16))],
                         ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_affine_gelu_half_rounds_once(channels_last, dtype, param_dtype, residual):
    """Directed inputs whose exact answer is known: positive x, scale, shift, residual and dy
    (no cancellation anywhere), so float32 is off by a few units of 2**-24 and the output
    and dx, rounded once from float32, must equal the exact float64 values rounded once
    wherever these lie clear of a rounding midpoint. An extra rounding of z, GELU(z) or dz
    to the half dtype inside the kernel fails this; the comparison with eager (within twice
    eager's error, above) does not see it."""
    shape = (2, 8, 5, 5)
    param_dtype = dtype if param_dtype == "same" else param_dtype
    x = uniform(shape, 0.25, 3.0, dtype)
    scale, shift = uniform((8,), 0.5, 1.5, param_dtype), uniform((8,), 0.0, 0.5, param_dtype)
    res = uniform(shape, 0.5, 2.0, dtype) if residual else None
    dy = uniform(shape, 0.5, 2.0, dtype)
    if channels_last:
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
        res = None if res is None else res.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = kernels.affine_gelu(x, scale, shift, res, backend="triton")
    dx, = torch.autograd.grad(y, [x], dy)

    # Exact values, and what float32 can move them (units of U32; a first-order analysis as in
    # test_kernels_squeeze_excite.float32_error_bounds, doubled for good measure).
    x64, a, b, g = x.detach().double(), scale.double()[:, None, None], shift.double()[:, None, None], dy.double()
    xa = x64 * a
    z = xa + b
    phi = torch.exp(-0.5 * z ** 2) / math.sqrt(2 * math.pi)
    gelu_grad = 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * phi
    exact_y = F.gelu(z) + (res.double() if residual else 0)
    e_z = xa.abs() + z.abs()
    e_y = gelu_grad.abs() * e_z + (2.5 + FUNCTION_ULPS / 2) * z.abs() + (exact_y.abs() if residual else 0)
    e_gelu_grad = ((phi * (2 - z ** 2)).abs() * e_z + 0.5 * (3 + FUNCTION_ULPS)
                   + (z * phi).abs() * (z ** 2 + FUNCTION_ULPS + 3) + gelu_grad.abs())
    exact_dx = g * gelu_grad * a
    e_dx = (g * a).abs() * e_gelu_grad + 2 * exact_dx.abs()
    assert_rounded_once(y, exact_y, 2 * U32 * e_y, f"affine_gelu {dtype} output")
    assert_rounded_once(dx, exact_dx, 2 * U32 * e_dx, f"affine_gelu {dtype} dx")


# --------------------------------------------------------------------------- batch_norm_gelu
EPS = 1e-5


def batch_norm_gelu_output(x, weight, bias, residual, gate, backend=None, activation="gelu"):
    """batch_norm_gelu's output alone (check_against_eager differentiates one tensor)."""
    if backend is None:                                   # the float64 twin, called as twin(*inputs)
        return kernels.batch_norm_gelu_eager(x, weight, bias, EPS, residual, gate, activation)[0]
    return kernels.batch_norm_gelu(x, weight, bias, EPS, residual, gate, backend=backend, activation=activation)[0]


def batch_norm_silu_output(x, weight, bias, residual, gate, backend=None):
    return batch_norm_gelu_output(x, weight, bias, residual, gate, backend, activation="silu")


def _bn_inputs(shape, dtype, channels_last, residual, gate=False):
    n, c = shape[:2]
    x = make(shape, dtype, channels_last, scale=2.0, shift=0.5)
    weight = make((c,), torch.float32, scale=0.3, shift=1.0)
    bias = make((c,), torch.float32, scale=0.5)
    return [x, weight, bias, make(shape, dtype, channels_last) if residual else None,
            make((n, c), dtype, scale=0.2, shift=0.8) if gate else None]


@pytest.mark.parametrize("gate", [False, True], ids=["", "gated"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(2, 512, 3, 3), (3, 40, 5, 7), (2, 3, 3, 3)], ids=str)
def test_batch_norm_gelu(shape, channels_last, dtype, residual, gate):
    """Output and the gradients of x (through the batch statistics), weight, bias,
    residual and gate (a sum over each sample's pixels). At least two samples: with one,
    BatchNorm undoes any per-channel gate and its exact gradient is 0 (all cancellation)."""
    inputs = _bn_inputs(shape, dtype, channels_last, residual, gate)
    g = torch.randn(shape, device=DEVICE, dtype=dtype)
    reduced = (2, 3) + ((4 + residual,) if gate else ())
    y = check_against_eager(batch_norm_gelu_output, batch_norm_gelu_output, inputs, g, dtype, reduced=reduced,
                            what=f"batch_norm_gelu{shape}")[0]
    assert y.stride() == inputs[0].stride(), "output must keep x's memory format"
    _, mean, var = kernels.batch_norm_gelu(*inputs[:3], EPS, *inputs[3:], backend="triton")
    gated = inputs[0].detach().float() * (1 if not gate else inputs[4].detach().float()[:, :, None, None])
    expected_var, expected_mean = torch.var_mean(gated, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(var, expected_var)
    assert not mean.requires_grad and not var.requires_grad


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_batch_norm_gelu_backward_is_batchnorms_through_its_statistics(channels_last):
    """The kernel's gradients (float32, interpreter) against PyTorch's own channel scaling,
    training-mode BatchNorm + GELU in float64, differentiated by autograd: the two passes'
    formula, not only the twin, is right."""
    inputs = _bn_inputs((4, 6, 5, 3), torch.float32, channels_last, True, True)
    g = torch.randn(inputs[0].shape, device=DEVICE)
    out_k, grads_k = run(lambda *a: kernels.batch_norm_gelu(*a[:3], EPS, *a[3:], backend="triton")[0], inputs, g)

    def reference(x, weight, bias, residual, gate):
        x = x * gate[:, :, None, None]
        return F.gelu(F.batch_norm(x, None, None, weight, bias, training=True, eps=EPS)) + residual
    out_r, grads_r = run(reference, as_f64(inputs), g.double())
    torch.testing.assert_close(out_k.double(), out_r, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(("x", "weight", "bias", "residual", "gate"), grads_k, grads_r):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


@pytest.mark.parametrize("gate", [False, True], ids=["", "gated"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", [(3, 40, 5, 7), (2, 3, 3, 3)], ids=str)
def test_batch_norm_silu(shape, channels_last, dtype, gate):
    """activation="silu" (hiverge's groups): SiLU in place of GELU in the forward and in
    both backward passes, against the twin with F.silu."""
    inputs = _bn_inputs(shape, dtype, channels_last, False, gate)
    g = torch.randn(shape, device=DEVICE, dtype=dtype)
    reduced = (2, 3) + ((5,) if gate else ())
    check_against_eager(batch_norm_silu_output, batch_norm_silu_output, inputs, g, dtype, reduced=reduced,
                        what=f"batch_norm_gelu{shape} activation=silu")


@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("gated", [False, True], ids=["", "gated"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_batch_norm_gelu_half_dx_rounds_once(channels_last, gated, activation):
    """Known answers for float16: the input gradient, computed in float32 and rounded once
    at the store, equals the exact (float64) gradient rounded once wherever float32's own
    error cannot reach a rounding midpoint. The bound on float32's error is taken from a
    float32 evaluation of the same formula on the same inputs (its distance to the exact
    value, times 8, plus 16 units of float32 roundoff of the terms): an extra float16
    rounding of dz, of the statistics' coefficients or of dx inside the kernel moves
    results by up to half a float16 unit (about 2**-11 of their size) and is seen."""
    shape = (2, 8, 4, 4)
    x = uniform(shape, -2.0, 3.0, torch.float16)
    weight, bias = uniform((8,), 0.5, 1.5, torch.float32), uniform((8,), -0.5, 0.5, torch.float32)
    dy = uniform(shape, 0.5, 2.0, torch.float16)
    gate = uniform(shape[:2], 0.5, 1.5, torch.float16) if gated else torch.ones(shape[:2], dtype=torch.float16)
    if channels_last:
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y, _, _ = kernels.batch_norm_gelu(x, weight, bias, EPS, gate=gate if gated else None, backend="triton",
                                      activation=activation)
    dx, = torch.autograd.grad(y, [x], dy)
    act = F.silu if activation == "silu" else F.gelu

    def exact_dx(dtype):
        x_ = x.detach().to(dtype).requires_grad_(True)
        xg = x_ * gate.to(dtype)[:, :, None, None]
        out = act(F.batch_norm(xg, None, None, weight.to(dtype), bias.to(dtype), training=True, eps=EPS))
        grad, = torch.autograd.grad(out, [x_], dy.to(dtype))
        return grad, out
    dx64, y64 = exact_dx(torch.float64)
    dx32, y32 = exact_dx(torch.float32)
    xg = x.detach().double() * gate.double()[:, :, None, None]
    scale = (weight.double() / torch.sqrt(xg.var((0, 2, 3), unbiased=False) + EPS))[:, None, None]
    terms = (dy.double().abs() * scale).abs() * gate.double()[:, :, None, None] + dx64.abs()
    # Decided shares over 25 seeds, both layouts and activations: dx 0.855-0.98 (mean 0.91), the
    # output 0.93-0.99; at least 80% decided, so that no seed fails for want of known answers.
    assert_rounded_once(dx, dx64, 8 * (dx32.double() - dx64).abs() + 16 * U32 * terms, "batch_norm_gelu float16 dx",
                        least=0.8)
    assert_rounded_once(y, y64, 8 * (y32.double() - y64).abs() + 16 * U32 * (y64.abs() + 1),
                        "batch_norm_gelu float16 output", least=0.8)


def test_batch_norm_gelu_rejects_bad_input():
    x = torch.randn(2, 4, 3, 3, device=DEVICE)
    w = torch.ones(4, device=DEVICE)
    f = kernels.batch_norm_gelu
    with pytest.raises(ValueError, match="eps"):
        f(x, w, w, 0.0, backend="triton")
    with pytest.raises(ValueError, match="eps"):
        f(x, w, w, True, backend="triton")
    with pytest.raises(ValueError, match="shape"):
        f(x, torch.ones(5, device=DEVICE), w, EPS, backend="triton")
    with pytest.raises(ValueError, match="no elements"):
        f(x[:0], w, w, EPS, backend="triton")
    with pytest.raises(TypeError, match="residual"):
        f(x, w, w, EPS, residual=x.half(), backend="triton")
    with pytest.raises(ValueError, match="gate"):
        f(x, w, w, EPS, gate=torch.ones(2, 5, device=DEVICE), backend="triton")
    for backend in ("triton", "eager"):
        with pytest.raises(ValueError, match="activation must be one of 'gelu', 'silu', got 'relu'"):
            f(x, w, w, EPS, backend=backend, activation="relu")
