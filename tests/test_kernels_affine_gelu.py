"""kernels.affine_gelu: GELU(x*scale[c] + shift[c]) (+ residual), Triton against eager,
output and the gradients of x, scale, shift and residual."""
import pytest
import torch

import kernels
from kernel_checks import (DEVICE, DTYPES, poisoned_kernel_outputs, check_against_eager,  # noqa: F401
                           make)

SHAPES = [
    (2, 32, 31, 31), (2, 128, 15, 15), (2, 256, 7, 7), (2, 512, 3, 3),   # the network's maps
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
