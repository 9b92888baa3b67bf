"""BatchNorm-apply + GELU (+ residual) in one pass:

    y = GELU(x * scale[c] + shift[c]) (+ residual)        x: (N, C, H, W)

This follows every convolution of the network. One read of x (and residual)
and one write of y replace the three passes of BN-apply, GELU and add.

Memory is viewed as a row-major (R, L) matrix:
  channels_last: R = N*H*W pixels,  L = C  (channel = column)
  contiguous:    R = N*C planes,    L = H*W (channel = row % C)
so the per-channel scale and shift are loaded once per tile, with no division
per element.

Backward (z = x*scale + shift, dz = dy * GELU'(z), recomputed from x):
  dx = dz * scale[c],  dscale[c] = sum(dz * x),  dshift[c] = sum(dz),  dresidual = dy.
The per-channel sums are written as per-program partials, then reduced by a
second small kernel: deterministic, no atomics.

batch_norm_gelu is the same forward with training-mode BatchNorm's batch statistics
and either GELU or (activation="silu", hiverge's groups) SiLU; its kernels take a SILU flag
(scale = weight * rstd, shift = bias - mean * scale), whose backward differentiates
through those statistics in two passes over x and dy and no stored intermediate:
  pass 1 (the backward kernels above, not writing dx): partial sums of dz and dz * x
  per channel (_bn_finish_kernel), M pixels: B = sum(dz), S = sum(dz * x), dbias = B,
      dweight = sum(dz * xhat) = rstd * (S - mean * B), k = rstd * dweight / M
  pass 2: dx = dz * scale - scale * k * (x - mean) - scale * B / M
(the BatchNorm input gradient written out; autograd through the statistics would add
a third pass over a stored float16 dx, and Inductor recomputes the mean for it).
"""
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _common as cm
from ._common import activation_f32, activation_grad_f32, cast_to, check_activation

# Fixed launch sizes (no autotuning: the interpreter cannot, and one setting per
# kernel is enough for a memory-bound pass): elements per tile and warps.
FWD_TILE, FWD_WARPS = 2048, 4
BWD_TILE, BWD_WARPS = 4096, 8
SUM_TILE, SUM_WARPS = 8192, 8
BWD_PER_SM = 2       # channels_last backward: programs per SM (each walks many row blocks)


# --------------------------------------------------------------------------- kernels
@triton.jit
def _fwd_kernel(x_ptr, res_ptr, gate_ptr, scale_ptr, shift_ptr, y_ptr, R, L, C, HW,
                CHANNELS_LAST: tl.constexpr, HAS_RES: tl.constexpr, HAS_GATE: tl.constexpr, SILU: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    rmask = rows < R
    lmask = cols < L
    mask = rmask[:, None] & lmask[None, :]
    offs = rows.to(tl.int64)[:, None] * L + cols[None, :]
    if CHANNELS_LAST:
        a = tl.load(scale_ptr + cols, mask=lmask, other=0.0).to(tl.float32)[None, :]
        b = tl.load(shift_ptr + cols, mask=lmask, other=0.0).to(tl.float32)[None, :]
    else:
        ch = rows % C
        a = tl.load(scale_ptr + ch, mask=rmask, other=0.0).to(tl.float32)[:, None]
        b = tl.load(shift_ptr + ch, mask=rmask, other=0.0).to(tl.float32)[:, None]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        x = x * _gate_tile(gate_ptr, rows, cols, mask, C, HW, CHANNELS_LAST)
    y = activation_f32(x * a + b, SILU)
    if HAS_RES:
        y += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, cast_to(y, y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gate_tile(gate_ptr, rows, cols, mask, C, HW, CHANNELS_LAST: tl.constexpr):
    """gate[n, c] (float32) at each element of a (rows, cols) tile of the row-major view:
    channels_last rows are pixels (n = row // HW, c = col), contiguous rows are planes
    (row = n * C + c, the gate's own flat index)."""
    if CHANNELS_LAST:
        offs = (rows // HW)[:, None] * C + cols[None, :]
    else:
        offs = rows[:, None] + cols[None, :] * 0
    return tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _bwd_tile(x_ptr, dy_ptr, dx_ptr, offs, mask, a, b, g, STORE_DX: tl.constexpr, SILU: tl.constexpr):
    """One tile of the backward, either layout, of x gated by g (1.0: no gate): writes
    dx = dz * scale (if STORE_DX) and returns (dz * x * g, dz), the tile's contributions
    to the scale and shift gradients."""
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * g
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dz = dy * activation_grad_f32(x * a + b, SILU)
    if STORE_DX:
        tl.store(dx_ptr + offs, cast_to(dz * a, dx_ptr.dtype.element_ty), mask=mask)
    return dz * x, dz


@triton.jit
def _bwd_cl_kernel(x_ptr, dy_ptr, gate_ptr, scale_ptr, shift_ptr, dx_ptr, pscale_ptr, pshift_ptr, M, C, HW,
                   STORE_DX: tl.constexpr, HAS_GATE: tl.constexpr, SILU: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """channels_last: (M = N*H*W, C). Grid (P, column blocks); program p walks row
    blocks p, p+P, ... and writes its column sums to row p of the partials."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    a = tl.load(scale_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    b = tl.load(shift_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    acc_s = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
    for blk in range(pid, tl.cdiv(M, BLOCK_M), nprog):
        rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (rows < M)[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        g = 1.0
        if HAS_GATE:
            g = _gate_tile(gate_ptr, rows, cols, mask, C, HW, True)
        dz_x, dz = _bwd_tile(x_ptr, dy_ptr, dx_ptr, offs, mask, a, b, g, STORE_DX, SILU)
        acc_s += dz_x
        acc_b += dz
    tl.store(pscale_ptr + pid * C + cols, tl.sum(acc_s, 0), mask=cmask)
    tl.store(pshift_ptr + pid * C + cols, tl.sum(acc_b, 0), mask=cmask)


@triton.jit
def _bwd_nchw_kernel(x_ptr, dy_ptr, gate_ptr, scale_ptr, shift_ptr, dx_ptr, pscale_ptr, pshift_ptr, R, L, C,
                     STORE_DX: tl.constexpr, HAS_GATE: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """contiguous: (R = N*C planes, L = H*W). Each program owns BLOCK_R whole planes
    and writes one sum per plane; partials are then (N, C)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    ch = rows % C
    a = tl.load(scale_ptr + ch, mask=rmask, other=0.0).to(tl.float32)[:, None]
    b = tl.load(shift_ptr + ch, mask=rmask, other=0.0).to(tl.float32)[:, None]
    acc_s = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_R, BLOCK_L], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        cols = l0 + tl.arange(0, BLOCK_L)
        mask = rmask[:, None] & (cols < L)[None, :]
        offs = rows.to(tl.int64)[:, None] * L + cols[None, :]
        g = 1.0
        if HAS_GATE:
            g = _gate_tile(gate_ptr, rows, cols, mask, C, L, False)
        dz_x, dz = _bwd_tile(x_ptr, dy_ptr, dx_ptr, offs, mask, a, b, g, STORE_DX, SILU)
        acc_s += dz_x
        acc_b += dz
    tl.store(pscale_ptr + rows, tl.sum(acc_s, 1), mask=rmask)
    tl.store(pshift_ptr + rows, tl.sum(acc_b, 1), mask=rmask)


@triton.jit
def _column_sums(p1_ptr, p2_ptr, P, C, cols, cmask, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """(sum_p p1[p, cols], sum_p p2[p, cols]) in float32 of two (P, C) partial-sum tables."""
    acc1 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)
        mask = (rows < P)[:, None] & cmask[None, :]
        offs = rows[:, None] * C + cols[None, :]
        acc1 += tl.load(p1_ptr + offs, mask=mask, other=0.0)
        acc2 += tl.load(p2_ptr + offs, mask=mask, other=0.0)
    return tl.sum(acc1, 0), tl.sum(acc2, 0)


@triton.jit
def _sum_rows_kernel(p1_ptr, p2_ptr, out1_ptr, out2_ptr, P, C,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """out1[c] = sum_p p1[p, c], out2 likewise, stored in the outputs' dtypes."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    sum1, sum2 = _column_sums(p1_ptr, p2_ptr, P, C, cols, cmask, BLOCK_P, BLOCK_C)
    tl.store(out1_ptr + cols, cast_to(sum1, out1_ptr.dtype.element_ty), mask=cmask)
    tl.store(out2_ptr + cols, cast_to(sum2, out2_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _bn_finish_kernel(p1_ptr, p2_ptr, mean_ptr, rstd_ptr, scale_ptr, dweight_ptr, dbias_ptr, cx_ptr, c0_ptr,
                      P, C, count, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """batch_norm_gelu between its passes, per channel: S = sum_p p1[p, c] (dz * x),
    B = sum_p p2[p, c] (dz); dweight = rstd * (S - mean * B), dbias = B, and pass 2's
    coefficients k = rstd * dweight / count, cx = -scale * k, c0 = scale * (k * mean - B / count)."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    sum1, sum2 = _column_sums(p1_ptr, p2_ptr, P, C, cols, cmask, BLOCK_P, BLOCK_C)
    sum_dz_x, sum_dz = sum1, sum2
    mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + cols, mask=cmask, other=0.0)
    scale = tl.load(scale_ptr + cols, mask=cmask, other=0.0)
    dweight = rstd * (sum_dz_x - mean * sum_dz)
    k = rstd * dweight / count
    tl.store(dweight_ptr + cols, cast_to(dweight, dweight_ptr.dtype.element_ty), mask=cmask)
    tl.store(dbias_ptr + cols, cast_to(sum_dz, dbias_ptr.dtype.element_ty), mask=cmask)
    tl.store(cx_ptr + cols, -scale * k, mask=cmask)
    tl.store(c0_ptr + cols, scale * (k * mean - sum_dz / count), mask=cmask)


@triton.jit
def _bn_dx_kernel(x_ptr, dy_ptr, scale_ptr, shift_ptr, cx_ptr, c0_ptr, dx_ptr, R, L, C,
                  CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """batch_norm_gelu's pass 2: dx = dz * scale[c] + x * cx[c] + c0[c], dz recomputed;
    tiled like _fwd_kernel."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    rmask = rows < R
    lmask = cols < L
    mask = rmask[:, None] & lmask[None, :]
    offs = rows.to(tl.int64)[:, None] * L + cols[None, :]
    if CHANNELS_LAST:
        ch = cols
        chmask = lmask
        a = tl.load(scale_ptr + ch, mask=chmask, other=0.0).to(tl.float32)[None, :]
        b = tl.load(shift_ptr + ch, mask=chmask, other=0.0).to(tl.float32)[None, :]
        cx = tl.load(cx_ptr + ch, mask=chmask, other=0.0)[None, :]
        c0 = tl.load(c0_ptr + ch, mask=chmask, other=0.0)[None, :]
    else:
        ch = rows % C
        chmask = rmask
        a = tl.load(scale_ptr + ch, mask=chmask, other=0.0).to(tl.float32)[:, None]
        b = tl.load(shift_ptr + ch, mask=chmask, other=0.0).to(tl.float32)[:, None]
        cx = tl.load(cx_ptr + ch, mask=chmask, other=0.0)[:, None]
        c0 = tl.load(c0_ptr + ch, mask=chmask, other=0.0)[:, None]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dz = dy * activation_grad_f32(x * a + b, SILU)
    tl.store(dx_ptr + offs, cast_to(dz * a + x * cx + c0, dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bn_gate_dx_kernel(x_ptr, dy_ptr, gate_ptr, scale_ptr, shift_ptr, cx_ptr, c0_ptr, dx_ptr, dgate_ptr,
                       N, C, HW, CHANNELS_LAST: tl.constexpr, SILU: tl.constexpr,
                       BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """batch_norm_gelu's pass 2 with a gate (xg = x * gate[n, c]): dxg = dz * scale + xg * cx + c0,
    dx = dxg * gate, dgate[n, c] = sum over the pixels of dxg * x. One program per sample
    and channel block (channels_last: pixels are rows) or per block of planes (contiguous:
    (n, c) planes are rows), walking the pixels, so that each gate gradient is one sum."""
    if CHANNELS_LAST:
        n = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols < C
        a = tl.load(scale_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        b = tl.load(shift_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        cx = tl.load(cx_ptr + cols, mask=cmask, other=0.0)[None, :]
        c0 = tl.load(c0_ptr + cols, mask=cmask, other=0.0)[None, :]
        g = tl.load(gate_ptr + n * C + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
        for s0 in range(0, HW, BLOCK_S):
            pix = s0 + tl.arange(0, BLOCK_S)
            mask = (pix < HW)[:, None] & cmask[None, :]
            offs = (n * HW + pix).to(tl.int64)[:, None] * C + cols[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            xg = x * g
            dxg = dy * activation_grad_f32(xg * a + b, SILU) * a + xg * cx + c0
            tl.store(dx_ptr + offs, cast_to(dxg * g, dx_ptr.dtype.element_ty), mask=mask)
            acc += tl.where(mask, dxg * x, 0.0)
        tl.store(dgate_ptr + n * C + cols, cast_to(tl.sum(acc, 0), dgate_ptr.dtype.element_ty), mask=cmask)
    else:
        planes = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        pmask = planes < N * C
        ch = planes % C
        a = tl.load(scale_ptr + ch, mask=pmask, other=0.0).to(tl.float32)[:, None]
        b = tl.load(shift_ptr + ch, mask=pmask, other=0.0).to(tl.float32)[:, None]
        cx = tl.load(cx_ptr + ch, mask=pmask, other=0.0)[:, None]
        c0 = tl.load(c0_ptr + ch, mask=pmask, other=0.0)[:, None]
        g = tl.load(gate_ptr + planes, mask=pmask, other=0.0).to(tl.float32)[:, None]
        acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=tl.float32)
        for s0 in range(0, HW, BLOCK_S):
            pix = s0 + tl.arange(0, BLOCK_S)
            mask = pmask[:, None] & (pix < HW)[None, :]
            offs = planes.to(tl.int64)[:, None] * HW + pix[None, :]
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            xg = x * g
            dxg = dy * activation_grad_f32(xg * a + b, SILU) * a + xg * cx + c0
            tl.store(dx_ptr + offs, cast_to(dxg * g, dx_ptr.dtype.element_ty), mask=mask)
            acc += tl.where(mask, dxg * x, 0.0)
        tl.store(dgate_ptr + planes, cast_to(tl.sum(acc, 1), dgate_ptr.dtype.element_ty), mask=pmask)


# --------------------------------------------------------------------------- launch wrappers
def _view(x: torch.Tensor):
    """(channels_last, R, L) of the row-major view described in the module docstring."""
    n, c, h, w = x.shape
    cl = cm.layout_4d("x", x)
    return (cl, n * h * w, c) if cl else (cl, n * c, h * w)


def _tile(L: int, max_l: int, tile: int):
    """(BLOCK_R, BLOCK_L): whole rows up to max_l columns, tile elements in all."""
    block_l = min(cm.next_pow2(L), max_l)
    return max(1, tile // block_l), block_l


def _forward(x, scale, shift, residual, gate=None, silu=False):
    y = cm.empty_like(x)
    if x.numel() == 0:
        return y
    cl, R, L = _view(x)
    if residual is not None:
        residual = cm.same_layout(residual, x)
    block_r, block_l = _tile(L, 1024, FWD_TILE)
    grid = (triton.cdiv(R, block_r), triton.cdiv(L, block_l))
    cm.launcher(_fwd_kernel)[grid](x, residual if residual is not None else x, gate if gate is not None else scale,
                                   scale, shift, y, R, L, x.shape[1], x.shape[2] * x.shape[3],
                                   CHANNELS_LAST=cl, HAS_RES=residual is not None, HAS_GATE=gate is not None,
                                   SILU=silu, BLOCK_R=block_r, BLOCK_L=block_l, num_warps=FWD_WARPS)
    return y


def _channel_partials(dy, x, scale, shift, dx, gate=None, silu=False):
    """Per-program partial sums (P, C) of dz * xg and dz, float32, and P, for
    dz = dy * act'(xg * scale + shift) (act GELU, or SiLU if silu), xg = x (* gate[n, c]);
    with dx given, also writes dx = dz * scale."""
    n, c = x.shape[:2]
    cl, R, L = _view(x)
    store_dx = dx is not None
    if cl:
        # About two programs per SM in all, each walking many row blocks: few partial
        # rows, so that the second kernel's sum is short.
        block_m, block_c = _tile(c, 256, BWD_TILE)
        cblocks = triton.cdiv(c, block_c)
        P = cm.persistent_programs(triton.cdiv(R, block_m), x.device, per_sm=max(1, BWD_PER_SM // cblocks))
        pscale = cm.empty((P, c), torch.float32, x.device)
        pshift = cm.empty((P, c), torch.float32, x.device)
        cm.launcher(_bwd_cl_kernel)[(P, cblocks)](x, dy, gate if gate is not None else scale, scale, shift,
                                                  dx if store_dx else x, pscale, pshift, R, c, x.shape[2] * x.shape[3],
                                                  STORE_DX=store_dx, HAS_GATE=gate is not None, SILU=silu,
                                                  BLOCK_M=block_m, BLOCK_C=block_c, num_warps=BWD_WARPS)
    else:
        block_r, block_l = _tile(L, 512, BWD_TILE)
        P = n
        pscale = cm.empty((n, c), torch.float32, x.device)
        pshift = cm.empty((n, c), torch.float32, x.device)
        cm.launcher(_bwd_nchw_kernel)[(triton.cdiv(R, block_r),)](x, dy, gate if gate is not None else scale, scale,
                                                                 shift, dx if store_dx else x, pscale, pshift, R, L, c,
                                                                 STORE_DX=store_dx, HAS_GATE=gate is not None,
                                                                 SILU=silu, BLOCK_R=block_r, BLOCK_L=block_l, num_warps=BWD_WARPS)
    return pscale, pshift, P


def _sum_launch(P, c):
    """(grid, BLOCK_P, BLOCK_C) of a kernel summing (P, c) partials over P."""
    block_c = min(cm.next_pow2(c), 64)
    block_p = max(1, min(cm.next_pow2(P), SUM_TILE // block_c))
    return (triton.cdiv(c, block_c),), block_p, block_c


def _backward(dy, x, scale, shift):
    c = x.shape[1]
    dy = cm.same_layout(dy, x)
    dx = cm.empty_like(x)
    dscale = cm.empty((c,), scale.dtype, x.device)
    dshift = cm.empty((c,), shift.dtype, x.device)
    if x.numel() == 0:
        return dx, dscale.zero_(), dshift.zero_()
    pscale, pshift, P = _channel_partials(dy, x, scale, shift, dx)
    grid, block_p, block_c = _sum_launch(P, c)
    cm.launcher(_sum_rows_kernel)[grid](pscale, pshift, dscale, dshift, P, c,
                                        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=SUM_WARPS)
    return dx, dscale, dshift


def _batch_affine(weight, bias, mean, var, eps):
    """(rstd, scale, shift) in float32 of training-mode BatchNorm with these statistics."""
    rstd = torch.rsqrt(var + eps)
    scale = weight.float() * rstd
    return rstd, scale, bias.float() - mean * scale


def _batch_norm_forward(x, weight, bias, eps, residual, gate, silu):
    gated = x.float() if gate is None else x.float() * gate.float()[:, :, None, None]
    var, mean = torch.var_mean(gated, dim=(0, 2, 3), correction=0)
    _, scale, shift = _batch_affine(weight, bias, mean, var, eps)
    return _forward(x, scale, shift, residual, gate, silu), mean, var


def _batch_norm_pass1(dy, x, weight, bias, mean, var, eps, gate, silu):
    """batch_norm_gelu's backward up to pass 2 (dy already in x's layout): (scale, shift, cx,
    c0, dweight, dbias), the first four float32 per channel for pass 2's dx."""
    n, c, h, w = x.shape
    rstd, scale, shift = _batch_affine(weight, bias, mean, var, eps)
    pscale, pshift, P = _channel_partials(dy, x, scale, shift, None, gate, silu)
    dweight = cm.empty((c,), weight.dtype, x.device)
    dbias = cm.empty((c,), bias.dtype, x.device)
    cx = cm.empty((c,), torch.float32, x.device)
    c0 = cm.empty((c,), torch.float32, x.device)
    grid, block_p, block_c = _sum_launch(P, c)
    cm.launcher(_bn_finish_kernel)[grid](pscale, pshift, mean, rstd, scale, dweight, dbias, cx, c0, P, c,
                                         float(n * h * w), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=SUM_WARPS)
    return scale, shift, cx, c0, dweight, dbias


def _batch_norm_backward(dy, x, weight, bias, mean, var, eps, gate, silu):
    n, c, h, w = x.shape
    dy = cm.same_layout(dy, x)
    scale, shift, cx, c0, dweight, dbias = _batch_norm_pass1(dy, x, weight, bias, mean, var, eps, gate, silu)
    dx = cm.empty_like(x)
    cl, R, L = _view(x)
    if gate is None:
        block_r, block_l = _tile(L, 1024, FWD_TILE)
        grid = (triton.cdiv(R, block_r), triton.cdiv(L, block_l))
        cm.launcher(_bn_dx_kernel)[grid](x, dy, scale, shift, cx, c0, dx, R, L, c, CHANNELS_LAST=cl, SILU=silu,
                                         BLOCK_R=block_r, BLOCK_L=block_l, num_warps=FWD_WARPS)
        return dx, dweight, dbias, x.new_empty((0,))
    dgate = cm.empty(gate.shape, gate.dtype, x.device)
    if cl:
        block_c = min(cm.next_pow2(c), 128)
        block_s = max(1, min(cm.next_pow2(h * w), FWD_TILE // block_c))
        grid = (n, triton.cdiv(c, block_c))
    else:
        block_s = min(cm.next_pow2(h * w), 256)
        block_c = max(1, FWD_TILE // block_s)
        grid = (triton.cdiv(n * c, block_c),)
    cm.launcher(_bn_gate_dx_kernel)[grid](x, dy, gate, scale, shift, cx, c0, dx, dgate, n, c, h * w,
                                          CHANNELS_LAST=cl, SILU=silu, BLOCK_S=block_s, BLOCK_C=block_c, num_warps=FWD_WARPS)
    return dx, dweight, dbias, dgate


# --------------------------------------------------------------------------- registration
def _affine_gelu_fake(x, scale, shift, residual):
    return torch.empty_like(x)


@cm.register_op("affine_gelu", fake=_affine_gelu_fake)
def _affine_gelu_op(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                    residual: Optional[torch.Tensor]) -> torch.Tensor:
    return _forward(x, scale, shift, residual)


def _affine_gelu_backward_fake(dy, x, scale, shift):
    return torch.empty_like(x), scale.new_empty(scale.shape), shift.new_empty(shift.shape)


@cm.register_op("affine_gelu_backward", fake=_affine_gelu_backward_fake)
def _affine_gelu_backward_op(dy: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                             shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(dy, x, scale, shift)


def _setup_context(ctx, inputs, output):
    x, scale, shift, residual = inputs
    ctx.has_residual = residual is not None
    ctx.save_for_backward(x, scale, shift)


def _autograd_backward(ctx, dy):
    x, scale, shift = ctx.saved_tensors
    dx, dscale, dshift = _affine_gelu_backward_op(dy, x, scale, shift)
    return dx, dscale, dshift, (dy if ctx.has_residual else None)


_affine_gelu_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def _batch_norm_gelu_fake(x, weight, bias, eps, residual, gate, silu):
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty((c,), dtype=torch.float32), x.new_empty((c,), dtype=torch.float32)


@cm.register_op("batch_norm_gelu", fake=_batch_norm_gelu_fake)
def _batch_norm_gelu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                        residual: Optional[torch.Tensor],
                        gate: Optional[torch.Tensor], silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _batch_norm_forward(x, weight, bias, eps, residual, gate, silu)


def _batch_norm_gelu_backward_fake(dy, x, weight, bias, mean, var, eps, gate, silu):
    dgate = x.new_empty((0,)) if gate is None else gate.new_empty(gate.shape)
    return torch.empty_like(x), weight.new_empty(weight.shape), bias.new_empty(bias.shape), dgate


@cm.register_op("batch_norm_gelu_backward", fake=_batch_norm_gelu_backward_fake)
def _batch_norm_gelu_backward_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                                 mean: torch.Tensor, var: torch.Tensor, eps: float, gate: Optional[torch.Tensor],
                                 silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _batch_norm_backward(dy, x, weight, bias, mean, var, eps, gate, silu)


def _bn_setup_context(ctx, inputs, output):
    x, weight, bias, eps, residual, gate, silu = inputs
    _, mean, var = output
    ctx.eps, ctx.has_residual, ctx.has_gate, ctx.silu = eps, residual is not None, gate is not None, silu
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, weight, bias, mean, var, gate)


def _bn_autograd_backward(ctx, dy, _dmean, _dvar):
    x, weight, bias, mean, var, gate = ctx.saved_tensors
    dx, dweight, dbias, dgate = _batch_norm_gelu_backward_op(dy, x, weight, bias, mean, var, ctx.eps, gate, ctx.silu)
    return dx, dweight, dbias, None, (dy if ctx.has_residual else None), (dgate if ctx.has_gate else None), None


_batch_norm_gelu_op.register_autograd(_bn_autograd_backward, setup_context=_bn_setup_context)


# --------------------------------------------------------------------------- public API
def affine_gelu_eager(x, scale, shift, residual=None):
    """The eager twin in plain PyTorch."""
    y = F.gelu(x * scale[:, None, None] + shift[:, None, None]).to(x.dtype)
    return y if residual is None else y + residual


def _check_inputs(x, per_channel: dict, residual):
    """x (N, C, H, W) in a supported dtype and layout; each per-channel tensor (C,) and
    contiguous on x's device; the residual, if any, x's shape and dtype."""
    cm.check_tensor("x", x, ndim=4)
    for name, t in per_channel.items():
        cm.check_tensor(name, t, ndim=1, device=x.device)
        cm.check_shape(name, t, (x.shape[1],))
        cm.check_contiguous(name, t)
    cm.layout_4d("x", x)
    if residual is not None:
        cm.check_tensor("residual", residual, ndim=4, dtypes=(x.dtype,), device=x.device)
        cm.check_shape("residual", residual, x.shape)
        cm.layout_4d("residual", residual)


def _check_eps(eps):
    """BatchNorm's eps: a positive int or float (not a bool)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")


def affine_gelu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                residual: Optional[torch.Tensor] = None, backend=None) -> torch.Tensor:
    """GELU(x * scale[c] + shift[c]) (+ residual) for x of shape (N, C, H, W).

    x: float32/float16/bfloat16, contiguous or channels_last; the output has x's dtype
    and memory format. scale, shift: (C,) in any of those dtypes (float32 beside a
    float16 x is fine). residual: x's shape and dtype, either memory format.
    Differentiable in x, scale, shift and residual; gradients come in each input's dtype.
    """
    _check_inputs(x, {"scale": scale, "shift": shift}, residual)
    backend = cm.resolve_backend(backend, x)
    if backend == "eager":
        return affine_gelu_eager(x, scale, shift, residual)
    return _affine_gelu_op(x, scale, shift, residual)


def batch_norm_gelu_eager(x, weight, bias, eps, residual=None, gate=None, activation="gelu"):
    """The eager twin in plain PyTorch: (output, batch mean, biased batch variance)."""
    act = F.silu if check_activation(activation) else F.gelu
    wide = torch.promote_types(x.dtype, torch.float32)          # float32, or float64 for a float64 x
    xg = x.to(wide) if gate is None else x.to(wide) * gate.to(wide)[:, :, None, None]
    var, mean = torch.var_mean(xg, dim=(0, 2, 3), correction=0)
    xhat = (xg - mean[:, None, None]) * torch.rsqrt(var + eps)[:, None, None]
    y = act(xhat * weight.to(wide)[:, None, None] + bias.to(wide)[:, None, None]).to(x.dtype)
    return (y if residual is None else y + residual), mean.detach(), var.detach()


def batch_norm_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                    residual: Optional[torch.Tensor] = None, gate: Optional[torch.Tensor] = None, backend=None,
                    activation: str = "gelu"):
    """Training-mode BatchNorm, GELU (+ residual) of xg = x (* gate[n, c]) for x of shape
    (N, C, H, W): GELU((xg - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]) (+ residual),
    with the batch's own mean and biased variance of xg over (N, H, W). The gate (the
    squeeze-and-excitation scale, (N, C), any float dtype) multiplies in float32, unrounded.

    Returns (output, mean, var): the output in x's dtype and memory format, the statistics
    in float32 (for running statistics; not differentiable). Differentiable in x (through
    the statistics too), weight, bias, residual and gate. Inputs as for affine_gelu, with
    weight and bias in place of scale and shift; eps a positive float. activation="silu"
    applies SiLU(z) = z * sigmoid(z) in place of GELU (hiverge's groups), forward and backward.
    """
    silu = check_activation(activation)
    _check_inputs(x, {"weight": weight, "bias": bias}, residual)
    _check_eps(eps)
    if x.numel() == 0:
        raise ValueError(f"x has no elements (shape {tuple(x.shape)}): batch statistics need at least one")
    if gate is not None:
        cm.check_tensor("gate", gate, ndim=2, device=x.device)
        cm.check_shape("gate", gate, tuple(x.shape[:2]))
        cm.check_contiguous("gate", gate)
    backend = cm.resolve_backend(backend, x)
    if backend == "eager":
        return batch_norm_gelu_eager(x, weight, bias, eps, residual, gate, activation)
    return _batch_norm_gelu_op(x, weight, bias, float(eps), residual, gate, silu)
