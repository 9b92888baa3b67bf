"""2x2 max-pool, then training-mode BatchNorm + GELU, with the pool folded into the
passes around it:

    p = max_pool2d(x, 2)      (stride 2, an odd last row or column dropped)
    y = GELU((p - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c])    (or SiLU: activation="silu")

It follows the first convolution of every group. Apart, the pool reads x and writes
p, BatchNorm reads p once for its statistics and once to apply them; backward, the
BatchNorm's pass 2 writes dp and the pool's backward reads it back to write dx. Here:
  forward:  one kernel reads x and writes p, the index of each window's winner (int8,
            the first of equal maxima, as max_pool2d picks) and per-program partial
            statistics (count, mean, sum of squared deviations, combined tile by tile
            as in Chan et al.'s parallel variance, no cancellation of large sums); a few
            torch operations combine the partials; affine_gelu's kernel applies them.
  backward: batch_norm_gelu's pass 1 over p and dy (sums of dz and dz * p); pass 2
            computes dp and writes it straight into dx at each window's winner, 0 at
            the other three and at a dropped odd edge. dp itself is never stored.
Per pooled map, that is one read of p and one write and read of dp fewer than the
pool and batch_norm_gelu apart.

Pixels are rows and channels columns, each element addressed through its tensor's
strides: one kernel serves contiguous and channels_last tensors (the network's), the
latter with coalesced loads along the channels.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _common as cm
from ._common import activation_grad_f32, cast_to, check_activation
from .affine_gelu import (BWD_PER_SM, FWD_TILE, FWD_WARPS, _batch_affine, _batch_norm_pass1, _check_eps, _check_inputs,
                          _tile,
                          batch_norm_gelu_eager)
from .affine_gelu import _forward as _affine_gelu_forward


# --------------------------------------------------------------------------- kernels
@triton.jit
def _window_offsets(rows, cols, HWo, Wo, s_n, s_c, s_h, s_w, POOLED: tl.constexpr):
    """(offsets, i, j) of a (pixels, channels) tile: pixel m = (n, i, j) of the pooled map;
    its element, or (POOLED False) the top-left element (n, 2i, 2j) of its window."""
    n = rows // HWo
    ij = rows - n * HWo
    i = ij // Wo
    j = ij - i * Wo
    if POOLED:
        pix = n.to(tl.int64) * s_n + i * s_h + j * s_w
    else:
        pix = n.to(tl.int64) * s_n + (2 * i) * s_h + (2 * j) * s_w
    return pix[:, None] + cols.to(tl.int64)[None, :] * s_c, i, j


@triton.jit
def _pool_stats_kernel(x_ptr, p_ptr, win_ptr, pcount_ptr, pmean_ptr, pm2_ptr, M, C, HWo, Wo,
                       xs_n, xs_c, xs_h, xs_w, ps_n, ps_c, ps_h, ps_w,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (P, column blocks); program p walks row blocks p, p+P, ... of the M = N*Ho*Wo
    pooled pixels, writes p and the winners, and leaves its count, mean and M2 per
    channel in row p of the partials."""
    pid = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for blk in range(pid, tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mask = rmask[:, None] & cmask[None, :]
        xoffs, i, j = _window_offsets(rows, cols, HWo, Wo, xs_n, xs_c, xs_h, xs_w, False)
        v0 = tl.load(x_ptr + xoffs, mask=mask, other=0.0)
        v1 = tl.load(x_ptr + xoffs + xs_w, mask=mask, other=0.0)
        v2 = tl.load(x_ptr + xoffs + xs_h, mask=mask, other=0.0)
        v3 = tl.load(x_ptr + xoffs + xs_h + xs_w, mask=mask, other=0.0)
        top = tl.maximum(tl.maximum(v0, v1, propagate_nan=tl.PropagateNan.ALL),
                         tl.maximum(v2, v3, propagate_nan=tl.PropagateNan.ALL), propagate_nan=tl.PropagateNan.ALL)
        win = tl.where(v0 == top, 0, tl.where(v1 == top, 1, tl.where(v2 == top, 2, 3)))
        poffs, _, _ = _window_offsets(rows, cols, HWo, Wo, ps_n, ps_c, ps_h, ps_w, True)
        tl.store(p_ptr + poffs, top, mask=mask)
        tl.store(win_ptr + poffs, win.to(tl.int8), mask=mask)
        # This tile's count, mean and M2 per channel, merged into the program's.
        v = top.to(tl.float32)
        tile_count = tl.sum(rmask.to(tl.float32), 0)
        tile_mean = tl.sum(tl.where(mask, v, 0.0), 0) / tile_count
        dev = tl.where(mask, v - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(dev * dev, 0)
        total = count + tile_count
        delta = tile_mean - mean
        mean += delta * (tile_count / total)
        m2 += tile_m2 + delta * delta * (count * (tile_count / total))
        count = total
    offs = pid * C + cols
    tl.store(pcount_ptr + offs, count, mask=cmask)
    tl.store(pmean_ptr + offs, mean, mask=cmask)
    tl.store(pm2_ptr + offs, m2, mask=cmask)


@triton.jit
def _bn_dx_unpool_kernel(p_ptr, dy_ptr, win_ptr, scale_ptr, shift_ptr, cx_ptr, c0_ptr, dx_ptr,
                         M, C, HWo, Wo, H, W, ps_n, ps_c, ps_h, ps_w, xs_n, xs_c, xs_h, xs_w,
                         SILU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Pass 2 into the pool's input: dp = dz * scale[c] + p * cx[c] + c0[c] (dz recomputed)
    goes to the window's winner, 0 to the other three; a program whose pixels border a
    dropped odd edge also writes that edge's zeros."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < M)[:, None] & cmask[None, :]
    a = tl.load(scale_ptr + cols, mask=cmask, other=0.0)[None, :]
    b = tl.load(shift_ptr + cols, mask=cmask, other=0.0)[None, :]
    cx = tl.load(cx_ptr + cols, mask=cmask, other=0.0)[None, :]
    c0 = tl.load(c0_ptr + cols, mask=cmask, other=0.0)[None, :]
    poffs, i, j = _window_offsets(rows, cols, HWo, Wo, ps_n, ps_c, ps_h, ps_w, True)
    p = tl.load(p_ptr + poffs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + poffs, mask=mask, other=0.0).to(tl.float32)
    win = tl.load(win_ptr + poffs, mask=mask, other=0)
    dp = cast_to(dy * activation_grad_f32(p * a + b, SILU) * a + p * cx + c0, dx_ptr.dtype.element_ty)
    zero = tl.zeros_like(dp)
    xoffs, _, _ = _window_offsets(rows, cols, HWo, Wo, xs_n, xs_c, xs_h, xs_w, False)
    tl.store(dx_ptr + xoffs, tl.where(win == 0, dp, zero), mask=mask)
    tl.store(dx_ptr + xoffs + xs_w, tl.where(win == 1, dp, zero), mask=mask)
    tl.store(dx_ptr + xoffs + xs_h, tl.where(win == 2, dp, zero), mask=mask)
    tl.store(dx_ptr + xoffs + xs_h + xs_w, tl.where(win == 3, dp, zero), mask=mask)
    last_row = mask & ((i == HWo // Wo - 1) & (H % 2 == 1))[:, None]      # row H-1 is dropped
    last_col = mask & ((j == Wo - 1) & (W % 2 == 1))[:, None]             # column W-1 is dropped
    tl.store(dx_ptr + xoffs + 2 * xs_h, zero, mask=last_row)
    tl.store(dx_ptr + xoffs + 2 * xs_h + xs_w, zero, mask=last_row)
    tl.store(dx_ptr + xoffs + 2 * xs_w, zero, mask=last_col)
    tl.store(dx_ptr + xoffs + xs_h + 2 * xs_w, zero, mask=last_col)
    tl.store(dx_ptr + xoffs + 2 * xs_h + 2 * xs_w, zero, mask=last_row & last_col)


# --------------------------------------------------------------------------- launch wrappers
def _pixel_tile(c: int):
    """(BLOCK_M, BLOCK_C): pooled pixels by channels, FWD_TILE elements."""
    return _tile(c, 128, FWD_TILE)


def _forward(x, weight, bias, eps, silu):
    n, c, h, w = x.shape
    ho, wo = h // 2, w // 2
    cl = cm.layout_4d("x", x)
    p = cm.empty((n, c, ho, wo), x.dtype, x.device, channels_last=cl)
    win = cm.empty((n, c, ho, wo), torch.int8, x.device, channels_last=cl)
    m = n * ho * wo
    block_m, block_c = _pixel_tile(c)
    cblocks = triton.cdiv(c, block_c)
    programs = cm.persistent_programs(triton.cdiv(m, block_m), x.device, per_sm=max(1, BWD_PER_SM // cblocks))
    pcount, pmean, pm2 = (cm.empty((programs, c), torch.float32, x.device) for _ in range(3))
    cm.launcher(_pool_stats_kernel)[(programs, cblocks)](x, p, win, pcount, pmean, pm2, m, c, ho * wo, wo,
                                                         *x.stride(), *p.stride(),
                                                         BLOCK_M=block_m, BLOCK_C=block_c, num_warps=FWD_WARPS)
    # Chan's merge of the programs' partials: mean of the means, M2 plus the means' spread.
    mean = (pcount * pmean).sum(0) / m
    var = (pm2.sum(0) + (pcount * (pmean - mean) ** 2).sum(0)) / m
    _, scale, shift = _batch_affine(weight, bias, mean, var, eps)
    return _affine_gelu_forward(p, scale, shift, None, silu=silu), mean, var, p, win


def _backward(dy, p, win, weight, bias, mean, var, eps, height, width, channels_last, silu):
    n, c, ho, wo = p.shape
    dy = cm.same_layout(dy, p)
    scale, shift, cx, c0, dweight, dbias = _batch_norm_pass1(dy, p, weight, bias, mean, var, eps, None, silu)
    dx = cm.empty((n, c, height, width), p.dtype, p.device, channels_last=channels_last)
    m = n * ho * wo
    block_m, block_c = _pixel_tile(c)
    grid = (triton.cdiv(m, block_m), triton.cdiv(c, block_c))
    cm.launcher(_bn_dx_unpool_kernel)[grid](p, dy, win, scale, shift, cx, c0, dx, m, c, ho * wo, wo, height, width,
                                            *p.stride(), *dx.stride(), SILU=silu,
                                            BLOCK_M=block_m, BLOCK_C=block_c, num_warps=FWD_WARPS)
    return dx, dweight, dbias


# --------------------------------------------------------------------------- registration
def _pool_batch_norm_gelu_fake(x, weight, bias, eps, silu):
    n, c, h, w = x.shape
    cl = cm.layout_4d("x", x)
    pooled = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, device=x.device,
                         memory_format=torch.channels_last if cl else torch.contiguous_format)
    stat = x.new_empty((c,), dtype=torch.float32)
    return torch.empty_like(pooled), stat, torch.empty_like(stat), pooled, torch.empty_like(pooled, dtype=torch.int8)


@cm.register_op("pool_batch_norm_gelu", fake=_pool_batch_norm_gelu_fake)
def _pool_batch_norm_gelu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, silu: bool
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(x, weight, bias, eps, silu)


def _pool_batch_norm_gelu_backward_fake(dy, p, win, weight, bias, mean, var, eps, height, width, channels_last, silu):
    n, c = p.shape[:2]
    dx = torch.empty((n, c, height, width), dtype=p.dtype, device=p.device,
                     memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return dx, weight.new_empty(weight.shape), bias.new_empty(bias.shape)


@cm.register_op("pool_batch_norm_gelu_backward", fake=_pool_batch_norm_gelu_backward_fake)
def _pool_batch_norm_gelu_backward_op(dy: torch.Tensor, p: torch.Tensor, win: torch.Tensor, weight: torch.Tensor,
                                      bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float,
                                      height: int, width: int, channels_last: bool, silu: bool
                                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dy, p, win, weight, bias, mean, var, eps, height, width, channels_last, silu)


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, silu = inputs
    _, mean, var, p, win = output
    ctx.eps, ctx.height, ctx.width, ctx.silu = eps, x.shape[2], x.shape[3], silu
    ctx.channels_last = cm.layout_4d("x", x)
    ctx.mark_non_differentiable(mean, var, p, win)
    ctx.save_for_backward(p, win, weight, bias, mean, var)


def _autograd_backward(ctx, dy, _dmean, _dvar, _dp, _dwin):
    p, win, weight, bias, mean, var = ctx.saved_tensors
    dx, dweight, dbias = _pool_batch_norm_gelu_backward_op(dy, p, win, weight, bias, mean, var, ctx.eps,
                                                           ctx.height, ctx.width, ctx.channels_last, ctx.silu)
    return dx, dweight, dbias, None, None


_pool_batch_norm_gelu_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public API
def pool_batch_norm_gelu_eager(x, weight, bias, eps, activation="gelu"):
    """The eager twin in plain PyTorch: (output, batch mean, biased batch variance)."""
    return batch_norm_gelu_eager(F.max_pool2d(x, 2), weight, bias, eps, activation=activation)


def pool_batch_norm_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, backend=None,
                         activation: str = "gelu"):
    """batch_norm_gelu(max_pool2d(x, 2), weight, bias, eps) for x of shape (N, C, H, W),
    H and W at least 2: the 2x2 max-pool (stride 2, an odd last row or column dropped),
    then training-mode BatchNorm with the batch's statistics and GELU.

    Returns (output, mean, var) as batch_norm_gelu does: the output (N, C, H // 2, W // 2)
    in x's dtype and memory format, the pooled map's batch mean and biased variance in
    float32 (not differentiable). Differentiable in x (max_pool2d's gradient: each window's
    first maximum gets it), weight and bias. Inputs as for batch_norm_gelu; activation="silu"
    applies SiLU in place of GELU.
    """
    silu = check_activation(activation)
    _check_inputs(x, {"weight": weight, "bias": bias}, None)
    _check_eps(eps)
    if x.shape[0] == 0 or x.shape[1] == 0 or x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"x has shape {tuple(x.shape)}: the 2x2 pool needs H and W of at least 2, and batch "
                         f"statistics at least one sample and channel")
    backend = cm.resolve_backend(backend, x)
    if backend == "eager":
        return pool_batch_norm_gelu_eager(x, weight, bias, eps, activation)
    y, mean, var, _, _ = _pool_batch_norm_gelu_op(x, weight, bias, float(eps), silu)
    return y, mean, var
