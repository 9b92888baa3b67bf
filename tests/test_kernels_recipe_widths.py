"""The kernels at the recipes' own widths and layouts, and their reductions' precision
with half-precision inputs.

Widths come from the recipes' Configs, so a recipe's new width is tested without
being listed here: the seed recipe's BatchNorm-apply + GELU at base/2, 2, 4 and 8 x
base (32, 128, 256, 512), the record recipe's GELU after its 24-channel whitening and
BatchNorm-apply + GELU at 64, 256, 256, in both memory formats. Batch and map sizes
are tiny (the interpreter's time grows with them; a wrong reduction axis does not
need them): at C = 64 the channels_last backward's tile is square (64 x 64), so
summing along the wrong axis gives a result of the right shape, silently wrong.

Half precision: a reduction of half-precision values must accumulate in float32.
Where every term is exact in float32 (a product of two float16 or bfloat16 values
is), float32 summation in any order is within (n - 1) u32 sum|terms| of the exact
sum (u32 = 2^-24); a float16 or bfloat16 term or partial sum (unit roundoff 2^-11,
2^-8) is off by far more, and fails that bound.
"""
import pytest
import torch

import kernels
from engine.recipes import config_class
from kernel_checks import (DEVICE, U32, assert_within_bound, check_against_eager, make,  # noqa: F401
                           poisoned_kernel_outputs)

SEED, RECORD = config_class("seed")(), config_class("airbench94-muon")()
AFFINE_GELU_WIDTHS = sorted(set(SEED.widths.values()) | set(RECORD.widths))        # 32, 64, 128, 256, 512
GELU_WIDTHS = [2 * 3 * RECORD.whiten_kernel ** 2]                                   # 24: the record's whitening
HALF = (torch.float16, torch.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("width", AFFINE_GELU_WIDTHS)
def test_affine_gelu_at_the_recipes_widths(width, channels_last, dtype):
    shape = (2, width, 3, 3)
    inputs = [make(shape, dtype, channels_last), make((width,), torch.float32, scale=0.5, shift=1.0),
              make((width,), torch.float32, scale=0.5), make(shape, dtype, channels_last)]
    g = torch.randn(shape, device=DEVICE, dtype=dtype).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    check_against_eager(kernels.affine_gelu, kernels.affine_gelu_eager, inputs, g, dtype, reduced=(2, 3),
                        what=f"affine_gelu{shape}")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("width", GELU_WIDTHS)
def test_gelu_at_the_recipes_widths(width, channels_last, dtype):
    shape = (2, width, 4, 4)
    x = make(shape, dtype, channels_last, scale=3.0)
    check_against_eager(kernels.gelu, kernels.gelu_eager, [x], torch.randn(shape, device=DEVICE, dtype=dtype), dtype,
                        what=f"gelu{shape}")


def sum_bound(terms: torch.Tensor, dims) -> tuple[torch.Tensor, torch.Tensor]:
    """(exact sum, float32 summation bound) of float64 `terms` over `dims`."""
    n = 1
    for d in dims:
        n *= terms.shape[d]
    return terms.sum(dims), (n - 1) * U32 * terms.abs().sum(dims)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_channel_scale_sums_half_inputs_in_float32(dtype, channels_last):
    """ds[n, c] = sum over H, W of x * dy, x and dy in half precision, s (so ds) float32:
    the engine's case. 64 terms per sum; the kernel's result within the float32 bound."""
    shape = (2, 64, 8, 8)
    x = make(shape, dtype, channels_last, requires_grad=False)
    s = make(shape[:2], torch.float32, scale=0.3, shift=0.5)
    dy = make(shape, dtype, channels_last, requires_grad=False)
    (ds,) = torch.autograd.grad(kernels.channel_scale(x, s, backend="triton"), [s], dy)
    exact, bound = sum_bound(x.double() * dy.double(), (2, 3))
    assert ds.dtype == torch.float32
    assert_within_bound(ds, exact, bound, f"channel_scale ds ({dtype}, {'nhwc' if channels_last else 'nchw'})")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_affine_gelu_sums_half_inputs_in_float32(dtype, channels_last):
    """dscale[c] = sum of dz * x and dshift[c] = sum of dz over N, H, W, with half x and dy
    and float32 scale and shift (BatchNorm's, the engine's case). With scale 0 and shift 10,
    z = 10 and GELU'(z) is 1 in float32 (its pdf term is below 1e-20), so dz = dy and every
    term is exact in float32: 128 terms per sum, within the float32 bound."""
    shape = (2, 64, 8, 8)
    x = make(shape, dtype, channels_last, requires_grad=False)
    scale = torch.zeros(64, device=DEVICE, requires_grad=True)
    shift = torch.full((64,), 10.0, device=DEVICE, requires_grad=True)
    dy = make(shape, dtype, channels_last, requires_grad=False)
    dscale, dshift = torch.autograd.grad(kernels.affine_gelu(x, scale, shift, backend="triton"), [scale, shift], dy)
    layout = "nhwc" if channels_last else "nchw"
    for result, terms, name in ((dscale, dy.double() * x.double(), "dscale"), (dshift, dy.double(), "dshift")):
        exact, bound = sum_bound(terms, (0, 2, 3))
        assert result.dtype == torch.float32
        assert_within_bound(result, exact, bound, f"affine_gelu {name} ({dtype}, {layout})")
