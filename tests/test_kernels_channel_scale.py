"""kernels.channel_scale: x * s[:, :, None, None], Triton against eager, output and both gradients."""
import pytest
import torch

import kernels
from kernel_checks import (DEVICE, DTYPES, poisoned_kernel_outputs, check_against_eager,  # noqa: F401
                           make)

SHAPES = [
    *[pytest.param(shape, marks=pytest.mark.slow, id=str(shape)) for shape in [(2, 128, 15, 15), (2, 32, 31, 31)]], (2, 512, 3, 3),   # where the SE gate is applied (+ the stem's size)
    # (the larger maps: the full suite only, as pytest -m slow)
    (1, 3, 3, 3), (3, 40, 5, 7), (1, 130, 3, 3), (2, 300, 2, 1),   # odd ones
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_channel_scale(shape, channels_last, dtype):
    x = make(shape, dtype, channels_last)
    s = make(shape[:2], dtype, scale=0.3, shift=0.5)
    g = torch.randn(shape, device=DEVICE, dtype=dtype)
    # results: output, dx, ds (a sum over H and W)
    y = check_against_eager(kernels.channel_scale, kernels.channel_scale_eager, [x, s], g, dtype,
                            reduced=(2,), what=f"channel_scale{shape}")[0]
    assert y.stride() == x.stride(), "output must keep x's memory format"


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_channel_scale_float32_gate(channels_last):
    shape = (3, 24, 5, 5)
    x = make(shape, torch.float16, channels_last)
    s = make(shape[:2], torch.float32)
    g = torch.randn(shape, device=DEVICE, dtype=torch.float16)
    res = check_against_eager(kernels.channel_scale, kernels.channel_scale_eager, [x, s], g,
                              torch.float16, reduced=(2,))
    assert [t.dtype for t in res] == [torch.float16, torch.float16, torch.float32]


def test_channel_scale_rejects_bad_input():
    x = torch.randn(2, 4, 3, 3, device=DEVICE)
    f = kernels.channel_scale
    with pytest.raises(ValueError, match="shape"):
        f(x, torch.ones(2, 5, device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match="dimensions"):
        f(x, torch.ones(2, 4, 1, 1, device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match="contiguous"):
        f(x, torch.ones(4, 2, device=DEVICE).t(), backend="triton")
    with pytest.raises(ValueError, match="neither contiguous"):
        f(x[:, :, ::2], torch.ones(2, 4, device=DEVICE), backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        f(x.to(torch.int32), torch.ones(2, 4, device=DEVICE), backend="triton")
