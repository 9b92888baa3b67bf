"""kernels.squeeze_excite: the SE gate, Triton against eager, output and all five gradients."""
import pytest
import torch

import kernels
from kernel_checks import (DEVICE, DTYPES, poisoned_kernel_outputs, check_against_eager,  # noqa: F401
                           make)

# (N, C, H, W, hidden)
SHAPES = [
    (2, 128, 15, 15, 8), (2, 512, 3, 3, 32),   # the network's two SE blocks
    (3, 64, 1, 1, 32),                         # several samples per program, last one partial
    (2, 256, 3, 3, 128),                       # channels in several blocks
    (2, 32, 15, 15, 2),                        # reduced base width
    (1, 40, 3, 3, 3), (3, 130, 5, 7, 9), (1, 20, 1, 1, 1),   # odd ones
]


def _inputs(n, c, h, w, ch, dtype, channels_last, param_dtype=None):
    """Pre-activations of about unit size. Far out (z < -5) GELU and GELU' fall below
    1e-6 and float32's 1 + erf(z / sqrt 2) keeps only absolute accuracy there (in both
    backends); with one hidden unit that would decide a whole gradient's relative error."""
    p = param_dtype or dtype
    return [make((n, c, h, w), dtype, channels_last, scale=1.0, shift=0.2),
            make((ch, c), p, scale=c ** -0.5), make((ch,), p, scale=0.5),
            make((c, ch), p, scale=ch ** -0.5 * 2), make((c,), p, scale=0.5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_squeeze_excite(shape, channels_last, dtype):
    inputs = _inputs(*shape, dtype, channels_last)
    g = torch.randn(shape[:2], device=DEVICE, dtype=dtype)
    # results: output, dr, dw1, db1, dw2, db2 (the weight gradients are sums over samples)
    res = check_against_eager(kernels.squeeze_excite, kernels.squeeze_excite_eager, inputs, g, dtype,
                              reduced=(2, 3, 4, 5), what=f"squeeze_excite{shape}")
    assert res[1].stride() == inputs[0].stride(), "dr must keep r's memory format"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_squeeze_excite_float32_weights(channels_last):
    inputs = _inputs(2, 64, 5, 5, 4, torch.float16, channels_last, param_dtype=torch.float32)
    g = torch.randn(2, 64, device=DEVICE, dtype=torch.float16)
    out_t = kernels.squeeze_excite(*inputs, backend="triton")
    grads = torch.autograd.grad(out_t, inputs, g)
    assert out_t.dtype == torch.float16
    assert [t.dtype for t in grads] == [t.dtype for t in inputs]
    ref = kernels.squeeze_excite_eager(*[t.detach().double() for t in inputs])
    torch.testing.assert_close(out_t.double(), ref, atol=1e-3, rtol=1e-3)


def test_squeeze_excite_rejects_bad_input():
    r = torch.randn(2, 32, 3, 3, device=DEVICE)
    w1, b1 = torch.randn(2, 32, device=DEVICE), torch.randn(2, device=DEVICE)
    w2, b2 = torch.randn(32, 2, device=DEVICE), torch.randn(32, device=DEVICE)
    f = kernels.squeeze_excite
    with pytest.raises(ValueError, match="w2"):
        f(r, w1, b1, w2.t().contiguous(), b2, backend="triton")
    with pytest.raises(ValueError, match="b1"):
        f(r, w1, b2, w2, b2, backend="triton")
    with pytest.raises(ValueError, match="contiguous"):
        f(r, w1, b1, w2.t().contiguous().t(), b2, backend="triton")
    with pytest.raises(ValueError, match="dimensions"):
        f(r[0], w1, b1, w2, b2, backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        f(r, w1.double(), b1, w2, b2, backend="triton")
