"""Exact (erf) GELU, forward and backward, for any dense tensor.

GELU is elementwise, so a dense tensor (contiguous, channels_last or any other
gap-free order) is walked as one flat array and the output gets the input's
strides. Backward recomputes GELU'(x) from the saved input: no activation is kept.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _common as cm
from ._common import cast_to, gelu_f32, gelu_grad_f32

BLOCK = 2048
NUM_WARPS = 4


# --------------------------------------------------------------------------- kernels
@triton.jit
def _gelu_fwd_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, cast_to(gelu_f32(x), y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gelu_bwd_kernel(x_ptr, dy_ptr, dx_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dx_ptr + offs, cast_to(dy * gelu_grad_f32(x), dx_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- launch + registration
def _gelu_fake(x):
    return torch.empty_like(x)


@cm.register_op("gelu", fake=_gelu_fake)
def _gelu_op(x: torch.Tensor) -> torch.Tensor:
    y = cm.empty_like(x)
    n = x.numel()
    if n:
        cm.launcher(_gelu_fwd_kernel)[(triton.cdiv(n, BLOCK),)](x, y, n, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return y


def _gelu_backward_fake(dy, x):
    return torch.empty_like(x)


@cm.register_op("gelu_backward", fake=_gelu_backward_fake)
def _gelu_backward_op(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dy = cm.same_layout(dy, x)
    dx = cm.empty_like(x)
    n = x.numel()
    if n:
        cm.launcher(_gelu_bwd_kernel)[(triton.cdiv(n, BLOCK),)](x, dy, dx, n, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return dx


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return _gelu_backward_op(dy, x)


_gelu_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public API
def gelu_eager(x: torch.Tensor) -> torch.Tensor:
    """The eager twin: PyTorch's own exact GELU."""
    return F.gelu(x)


def gelu(x: torch.Tensor, backend=None) -> torch.Tensor:
    """Exact (erf) GELU of a dense float32/float16/bfloat16 tensor of any shape.

    The output has the input's dtype and strides (contiguous stays contiguous,
    channels_last stays channels_last). backend: None (default rule), "eager" or "triton".
    """
    cm.check_tensor("x", x)
    backend = cm.resolve_backend(backend, x)
    if not cm.is_dense(x):
        raise ValueError(f"x with shape {tuple(x.shape)} and strides {x.stride()} is not dense; "
                         f"call .contiguous() first")
    if backend == "eager":
        return gelu_eager(x)
    return _gelu_op(x)
