"""kernels.gelu: Triton against the eager twin (F.gelu), forward and backward."""
import pytest
import torch

import kernels
from kernel_checks import (DEVICE, DTYPES, poisoned_kernel_outputs, check_against_eager,  # noqa: F401
                           make)

SHAPES = [
    *[pytest.param(shape, marks=pytest.mark.slow, id=str(shape)) for shape in [(2, 32, 31, 31), (2, 128, 15, 15), (2, 256, 7, 7)]], (2, 512, 3, 3),   # the network's maps
    # (the larger maps: the full suite only, as pytest -m slow)
    (1, 3, 3, 3), (3, 40, 5, 7), (1, 130, 3, 3),                          # odd ones
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gelu_4d(shape, channels_last, dtype):
    x = make(shape, dtype, channels_last, scale=3.0)
    (y,) = check_against_eager(kernels.gelu, kernels.gelu_eager, [x], torch.randn(shape, device=DEVICE, dtype=dtype), dtype,
                               what=f"gelu{shape}")[:1]
    assert y.stride() == x.stride(), "output must keep the input's memory format"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (2047,), (4099,), (3, 7), (5, 1, 9)], ids=str)
def test_gelu_any_rank(shape, dtype):
    x = make(shape, dtype, scale=3.0)
    check_against_eager(kernels.gelu, kernels.gelu_eager, [x], torch.randn(shape, device=DEVICE, dtype=dtype), dtype)


def test_gelu_permuted_dense_keeps_strides():
    x = make((6, 5, 4), torch.float32).detach().transpose(0, 2).requires_grad_()   # dense, not contiguous
    y = check_against_eager(kernels.gelu, kernels.gelu_eager, [x], torch.randn(x.shape, device=DEVICE), torch.float32)[0]
    assert y.stride() == x.stride()


def test_gelu_gradient_in_another_layout():
    """An incoming gradient in a different memory format (or expanded) is handled."""
    x = make((2, 8, 5, 5), torch.float16, channels_last=True)
    g = torch.randn(1, 1, 1, 1, device=DEVICE, dtype=torch.float16).expand(x.shape)
    check_against_eager(kernels.gelu, kernels.gelu_eager, [x], g, torch.float16)


def test_gelu_empty():
    x = torch.empty(0, 3, device=DEVICE)
    assert kernels.gelu(x, backend="triton").shape == (0, 3)


def test_gelu_rejects_bad_input():
    with pytest.raises(TypeError, match="dtype"):
        kernels.gelu(torch.ones(4, device=DEVICE, dtype=torch.float64), backend="triton")
    with pytest.raises(TypeError, match="torch.Tensor"):
        kernels.gelu([1.0, 2.0], backend="triton")
    with pytest.raises(ValueError, match="not dense"):
        kernels.gelu(torch.randn(4, 6, device=DEVICE)[:, ::2], backend="triton")
