"""Per-sample, per-channel scaling: y = x * s[:, :, None, None]   (the SE gate applied).

Forward is one elementwise pass. Backward is one pass too:
  dx = dy * s[n, c]   and   ds[n, c] = sum over (h, w) of dy * x,
with each program owning whole (n, c) maps, so no partial sums are needed.

Layouts (x is (N, C, H, W), S = H*W):
  channels_last: sample n is an (S, C) row-major block; a tile is (pixels, channels).
  contiguous:    the (n, c) maps are rows of length S; a tile is (maps, pixels).
"""
import torch
import triton
import triton.language as tl

from . import _common as cm
from ._common import cast_to

FWD_TILE, FWD_WARPS = 2048, 4
BWD_TILE, BWD_WARPS = 4096, 8


# --------------------------------------------------------------------------- kernels
@triton.jit
def _fwd_kernel(x_ptr, s_ptr, y_ptr, R, L, S, CHANNELS_LAST: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """x viewed as (R, L): channels_last R = N*S, L = C; contiguous R = N*C, L = S."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    rmask = rows < R
    mask = rmask[:, None] & (cols < L)[None, :]
    offs = rows.to(tl.int64)[:, None] * L + cols[None, :]
    if CHANNELS_LAST:
        g = tl.load(s_ptr + (rows // S)[:, None] * L + cols[None, :], mask=mask, other=0.0)
    else:
        g = tl.load(s_ptr + rows, mask=rmask, other=0.0)[:, None]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, cast_to(x * g.to(tl.float32), y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_cl_kernel(x_ptr, s_ptr, dy_ptr, dx_ptr, ds_ptr, C, S,
                   BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (N, channel blocks): one program per sample and channel block, all pixels."""
    n = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    g = tl.load(s_ptr + n * C + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    base = n.to(tl.int64) * S * C
    acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        pix = s0 + tl.arange(0, BLOCK_S)
        mask = (pix < S)[:, None] & cmask[None, :]
        offs = base + pix[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, cast_to(dy * g, dx_ptr.dtype.element_ty), mask=mask)
        acc += dy * x
    tl.store(ds_ptr + n * C + cols, cast_to(tl.sum(acc, 0), ds_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _bwd_nchw_kernel(x_ptr, s_ptr, dy_ptr, dx_ptr, ds_ptr, R, S,
                     BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    """Grid (map blocks,): R = N*C maps of S pixels; one sum per map."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    g = tl.load(s_ptr + rows, mask=rmask, other=0.0).to(tl.float32)[:, None]
    acc = tl.zeros([BLOCK_R, BLOCK_S], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        pix = s0 + tl.arange(0, BLOCK_S)
        mask = rmask[:, None] & (pix < S)[None, :]
        offs = rows.to(tl.int64)[:, None] * S + pix[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, cast_to(dy * g, dx_ptr.dtype.element_ty), mask=mask)
        acc += dy * x
    tl.store(ds_ptr + rows, cast_to(tl.sum(acc, 1), ds_ptr.dtype.element_ty), mask=rmask)


# --------------------------------------------------------------------------- launch wrappers
def _forward(x, s):
    y = cm.empty_like(x)
    if x.numel() == 0:
        return y
    n, c, h, w = x.shape
    cl = cm.layout_4d("x", x)
    R, L = (n * h * w, c) if cl else (n * c, h * w)
    block_l = min(cm.next_pow2(L), 1024)
    block_r = max(1, FWD_TILE // block_l)
    grid = (triton.cdiv(R, block_r), triton.cdiv(L, block_l))
    cm.launcher(_fwd_kernel)[grid](x, s, y, R, L, h * w, CHANNELS_LAST=cl,
                                   BLOCK_R=block_r, BLOCK_L=block_l, num_warps=FWD_WARPS)
    return y


def _backward(dy, x, s):
    dy = cm.same_layout(dy, x)
    dx = cm.empty_like(x)
    ds = cm.empty(tuple(s.shape), s.dtype, x.device)
    if x.numel() == 0:
        return dx, ds.zero_()
    n, c, h, w = x.shape
    S = h * w
    if cm.layout_4d("x", x):
        block_c = min(cm.next_pow2(c), 256)
        block_s = max(1, min(cm.next_pow2(S), BWD_TILE // block_c))
        cm.launcher(_bwd_cl_kernel)[(n, triton.cdiv(c, block_c))](x, s, dy, dx, ds, c, S,
                                                                 BLOCK_S=block_s, BLOCK_C=block_c, num_warps=BWD_WARPS)
    else:
        block_s = min(cm.next_pow2(S), 1024)
        block_r = max(1, BWD_TILE // block_s)
        cm.launcher(_bwd_nchw_kernel)[(triton.cdiv(n * c, block_r),)](
            x, s, dy, dx, ds, n * c, S, BLOCK_R=block_r, BLOCK_S=block_s, num_warps=BWD_WARPS)
    return dx, ds


# --------------------------------------------------------------------------- registration
def _channel_scale_fake(x, s):
    return torch.empty_like(x)


@cm.register_op("channel_scale", fake=_channel_scale_fake)
def _channel_scale_op(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return _forward(x, s)


def _channel_scale_backward_fake(dy, x, s):
    return torch.empty_like(x), s.new_empty(s.shape)


@cm.register_op("channel_scale_backward", fake=_channel_scale_backward_fake)
def _channel_scale_backward_op(dy: torch.Tensor, x: torch.Tensor,
                               s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward(dy, x, s)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _autograd_backward(ctx, dy):
    x, s = ctx.saved_tensors
    return _channel_scale_backward_op(dy, x, s)


_channel_scale_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public API
def channel_scale_eager(x, s):
    """The eager twin in plain PyTorch."""
    return (x * s[:, :, None, None]).to(x.dtype)


def channel_scale(x: torch.Tensor, s: torch.Tensor, backend=None) -> torch.Tensor:
    """x * s[:, :, None, None] for x (N, C, H, W) and s (N, C).

    x: float32/float16/bfloat16, contiguous or channels_last; the output has x's dtype
    and memory format. s: contiguous (N, C), any of those dtypes. Differentiable in both;
    ds (a sum over H and W) comes in s's dtype.
    """
    cm.check_tensor("x", x, ndim=4)
    cm.check_tensor("s", s, ndim=2, device=x.device)
    cm.check_shape("s", s, x.shape[:2])
    cm.check_contiguous("s", s)
    cm.layout_4d("x", x)
    backend = cm.resolve_backend(backend, x)
    if backend == "eager":
        return channel_scale_eager(x, s)
    return _channel_scale_op(x, s)
