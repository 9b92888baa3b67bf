"""Squeeze-and-excitation gate, forward in one launch:

    m = mean of r over (H, W)            (N, C)
    h = GELU(m @ w1.T + b1)              (N, Ch)     w1: (Ch, C), nn.Linear layout
    s = sigmoid(h @ w2.T + b2)           (N, C)      w2: (C, Ch)

Each program takes BLOCK_N samples: it reduces their maps channel block by
channel block, feeding each block of means straight into fc1, then runs fc2
and the sigmoid. The means (float32, N x C) are also written out for backward.

Backward, two Triton launches:
    recompute z1 = m @ w1.T + b1, h = GELU(z1), s = sigmoid(h @ w2.T + b2)  (from saved m)
    dz2 = ds * s * (1 - s);  dh = dz2 @ w2;  dz1 = dh * GELU'(z1);  dm = dz1 @ w1
    dr[n, c, :, :] = dm[n, c] / (H*W)                        (kernel 1, per sample block; it
        writes dm / (H*W) as (N, C) and autograd hands it on broadcast over H and W,
        so that the kernel adding it to the branch's other gradient reads (N, C), not a map)
    dw2 = dz2.T @ h, db2 = sum dz2, dw1 = dz1.T @ m, db1 = sum dz1   (kernel 2, per channel block)
Per sample, the small matrix products run as broadcast-multiply-and-sum in float32:
the hidden size (C/16) is far below what tensor cores want. Over the samples
(kernel 2) they are float32 tl.dot with input_precision="ieee".
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _common as cm
from ._common import cast_to, gelu_f32, gelu_grad_f32

NUM_WARPS = 8
LOAD_TILE = 8192     # elements of r per (samples, pixels, channels) tile
FC_TILE = 16384      # products per (samples, hidden, channels) tile


# --------------------------------------------------------------------------- kernels
@triton.jit
def _offsets(n, pix, cols, C, S, CHANNELS_LAST: tl.constexpr):
    """Offsets of r[n, cols, pix] as a (BLOCK_N, BLOCK_S, BLOCK_C) tile."""
    base = n.to(tl.int64)[:, None, None] * C * S
    if CHANNELS_LAST:
        return base + pix[None, :, None] * C + cols[None, None, :]
    else:
        return base + pix[None, :, None] + cols[None, None, :] * S


@triton.jit
def _w1_block(w1_ptr, hid, hmask, cols, cmask, C):
    """w1[hid, cols] in float32, (BLOCK_H, BLOCK_C); masked entries are 0."""
    return tl.load(w1_ptr + hid[:, None] * C + cols[None, :],
                   mask=hmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _w2t_block(w2_ptr, hid, hmask, cols, cmask, CH):
    """w2[cols, hid] transposed, in float32, (BLOCK_H, BLOCK_C); masked entries are 0."""
    return tl.load(w2_ptr + cols[None, :] * CH + hid[:, None],
                   mask=hmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _fwd_kernel(r_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, s_ptr, m_ptr, N, C, S, CH,
                CHANNELS_LAST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    hid = tl.arange(0, BLOCK_H)
    hmask = hid < CH
    inv_s = 1.0 / S
    z1 = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        acc = tl.zeros([BLOCK_N, BLOCK_S, BLOCK_C], dtype=tl.float32)
        for s0 in range(0, S, BLOCK_S):
            pix = s0 + tl.arange(0, BLOCK_S)
            mask = nmask[:, None, None] & (pix < S)[None, :, None] & cmask[None, None, :]
            offs = _offsets(n, pix, cols, C, S, CHANNELS_LAST)
            acc += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.sum(acc, 1) * inv_s                                          # (BN, BC)
        mask2 = nmask[:, None] & cmask[None, :]
        tl.store(m_ptr + n[:, None] * C + cols[None, :], m, mask=mask2)
        w1 = _w1_block(w1_ptr, hid, hmask, cols, cmask, C)                   # (BH, BC)
        z1 += tl.sum(m[:, None, :] * w1[None, :, :], 2)                      # (BN, BH)
    z1 += tl.load(b1_ptr + hid, mask=hmask, other=0.0).to(tl.float32)[None, :]
    h = gelu_f32(z1)          # padded hidden units: GELU(0) = 0, so they add nothing below
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        w2 = _w2t_block(w2_ptr, hid, hmask, cols, cmask, CH)                 # (BH, BC) = w2.T
        z2 = tl.sum(h[:, :, None] * w2[None, :, :], 1)
        z2 += tl.load(b2_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        tl.store(s_ptr + n[:, None] * C + cols[None, :], cast_to(tl.sigmoid(z2), s_ptr.dtype.element_ty),
                 mask=nmask[:, None] & cmask[None, :])


@triton.jit
def _bwd_kernel(ds_ptr, m_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                dmean_ptr, dz2_ptr, dz1_ptr, h_ptr, N, C, S, CH,
                BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    hid = tl.arange(0, BLOCK_H)
    hmask = hid < CH
    # z1 and h from the saved means
    z1 = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        m = tl.load(m_ptr + n[:, None] * C + cols[None, :], mask=nmask[:, None] & cmask[None, :], other=0.0)
        w1 = _w1_block(w1_ptr, hid, hmask, cols, cmask, C)
        z1 += tl.sum(m[:, None, :] * w1[None, :, :], 2)
    z1 += tl.load(b1_ptr + hid, mask=hmask, other=0.0).to(tl.float32)[None, :]
    h = gelu_f32(z1)
    hmask2 = nmask[:, None] & hmask[None, :]
    tl.store(h_ptr + n[:, None] * CH + hid[None, :], h, mask=hmask2)
    # dz2 = ds * s * (1 - s), with s recomputed in float32; dh = dz2 @ w2
    dh = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        mask2 = nmask[:, None] & cmask[None, :]
        w2 = _w2t_block(w2_ptr, hid, hmask, cols, cmask, CH)                 # (BH, BC) = w2.T
        z2 = tl.sum(h[:, :, None] * w2[None, :, :], 1)
        z2 += tl.load(b2_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
        s = tl.sigmoid(z2)
        g = tl.load(ds_ptr + n[:, None] * C + cols[None, :], mask=mask2, other=0.0).to(tl.float32)
        dz2 = g * s * (1.0 - s)
        tl.store(dz2_ptr + n[:, None] * C + cols[None, :], dz2, mask=mask2)
        dh += tl.sum(dz2[:, None, :] * w2[None, :, :], 2)
    dz1 = dh * gelu_grad_f32(z1)
    tl.store(dz1_ptr + n[:, None] * CH + hid[None, :], dz1, mask=hmask2)
    # dm = dz1 @ w1, each pixel's share of it: dm / (H*W)
    inv_s = 1.0 / S
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        w1 = _w1_block(w1_ptr, hid, hmask, cols, cmask, C)
        dm = tl.sum(dz1[:, :, None] * w1[None, :, :], 1) * inv_s                # (BN, BC)
        tl.store(dmean_ptr + n[:, None] * C + cols[None, :], cast_to(dm, dmean_ptr.dtype.element_ty),
                 mask=nmask[:, None] & cmask[None, :])


@triton.jit
def _wgrad_kernel(dz2_ptr, h_ptr, dz1_ptr, m_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C, CH,
                  BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr):
    """Weight gradients, sums over the N samples, for one block of channels:
    dw2[c, :] = dz2[:, c]^T h,  db2[c] = sum dz2[:, c],  dw1[:, c] = dz1^T m[:, c],
    db1 = sum dz1 (stored by program 0). Stored in the parameters' dtypes."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    hid = tl.arange(0, BLOCK_H)
    hmask = hid < CH
    acc_w2 = tl.zeros([BLOCK_C, BLOCK_H], dtype=tl.float32)
    acc_w1 = tl.zeros([BLOCK_H, BLOCK_C], dtype=tl.float32)
    acc_b2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_b1 = tl.zeros([BLOCK_H], dtype=tl.float32)
    for k0 in range(0, N, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < N
        cm2 = kmask[:, None] & cmask[None, :]
        hm2 = kmask[:, None] & hmask[None, :]
        dz2 = tl.load(dz2_ptr + ks[:, None] * C + cols[None, :], mask=cm2, other=0.0)    # (K, BC)
        m = tl.load(m_ptr + ks[:, None] * C + cols[None, :], mask=cm2, other=0.0)        # (K, BC)
        h = tl.load(h_ptr + ks[:, None] * CH + hid[None, :], mask=hm2, other=0.0)        # (K, BH)
        dz1 = tl.load(dz1_ptr + ks[:, None] * CH + hid[None, :], mask=hm2, other=0.0)    # (K, BH)
        acc_w2 = tl.dot(tl.trans(dz2), h, acc_w2, input_precision="ieee")
        acc_w1 = tl.dot(tl.trans(dz1), m, acc_w1, input_precision="ieee")
        acc_b2 += tl.sum(dz2, 0)
        acc_b1 += tl.sum(dz1, 0)
    tl.store(dw2_ptr + cols[:, None] * CH + hid[None, :], cast_to(acc_w2, dw2_ptr.dtype.element_ty),
             mask=cmask[:, None] & hmask[None, :])
    tl.store(dw1_ptr + hid[:, None] * C + cols[None, :], cast_to(acc_w1, dw1_ptr.dtype.element_ty),
             mask=hmask[:, None] & cmask[None, :])
    tl.store(db2_ptr + cols, cast_to(acc_b2, db2_ptr.dtype.element_ty), mask=cmask)
    tl.store(db1_ptr + hid, cast_to(acc_b1, db1_ptr.dtype.element_ty), mask=hmask & (pid == 0))


# --------------------------------------------------------------------------- launch sizes
def _blocks(r, ch, w_itemsize):
    """(BLOCK_N, BLOCK_S, BLOCK_C, BLOCK_H) for r of shape (N, C, H, W) and hidden size ch."""
    n, c, h, w = r.shape
    S = h * w
    block_h = max(2, cm.next_pow2(ch))
    # All channels in one tile where the fc products fit (so at the network's sizes,
    # C=128/Ch=8 and C=512/Ch=32): each program then runs loads -> fc1 -> fc2 with no
    # serial loop over channel blocks, whose load latencies would add up (measured on
    # an H200: 64-channel blocks made C=512 at 3x3 2.5x slower than torch.compile).
    block_c = min(cm.next_pow2(c), max(1, FC_TILE // block_h))
    # Several samples per program where the weights (read by every program) outweigh
    # one sample's map and the tile has room; but keep at least one program per SM.
    w_bytes = 2 * c * ch * w_itemsize
    r_bytes = c * S * r.element_size()
    block_n = min(4, cm.prev_pow2(max(1, w_bytes // max(1, r_bytes))),
                  cm.prev_pow2(max(1, FC_TILE // (block_h * block_c))))
    while block_n > 1 and triton.cdiv(n, block_n) < cm.num_sms(r.device):
        block_n //= 2
    block_s = max(1, min(cm.next_pow2(S), LOAD_TILE // (block_n * block_c)))
    return block_n, block_s, block_c, block_h


def _forward(r, w1, b1, w2, b2):
    n, c, h, w = r.shape
    ch = w1.shape[0]
    s = cm.empty((n, c), r.dtype, r.device)
    m = cm.empty((n, c), torch.float32, r.device)
    if n == 0:
        return s, m
    cl = cm.layout_4d("r", r)
    bn, bs, bc, bh = _blocks(r, ch, w1.element_size())
    cm.launcher(_fwd_kernel)[(triton.cdiv(n, bn),)](r, w1, b1, w2, b2, s, m, n, c, h * w, ch, CHANNELS_LAST=cl,
                                                    BLOCK_N=bn, BLOCK_S=bs, BLOCK_C=bc, BLOCK_H=bh,
                                                    num_warps=NUM_WARPS)
    return s, m


def _backward(ds, r, m, w1, b1, w2, b2):
    n, c, h, w = r.shape
    ch = w1.shape[0]
    ds = ds.contiguous()
    dmean = cm.empty((n, c), r.dtype, r.device)
    dz2 = cm.empty((n, c), torch.float32, r.device)
    dz1 = cm.empty((n, ch), torch.float32, r.device)
    hid = cm.empty((n, ch), torch.float32, r.device)
    if n:
        bn, _, bc, bh = _blocks(r, ch, w1.element_size())
        cm.launcher(_bwd_kernel)[(triton.cdiv(n, bn),)](ds, m, w1, b1, w2, b2, dmean, dz2, dz1, hid, n, c, h * w,
                                                        ch, BLOCK_N=bn, BLOCK_C=bc, BLOCK_H=bh, num_warps=NUM_WARPS)
    dw1, db1 = cm.empty(tuple(w1.shape), w1.dtype, r.device), cm.empty(tuple(b1.shape), b1.dtype, r.device)
    dw2, db2 = cm.empty(tuple(w2.shape), w2.dtype, r.device), cm.empty(tuple(b2.shape), b2.dtype, r.device)
    if n == 0:
        for t in (dw1, db1, dw2, db2):
            t.zero_()
        return dmean, dw1, db1, dw2, db2
    # tl.dot wants every dimension >= 16; padded rows and columns are masked to zero.
    # Wide hidden layers (not the network's) get short, unpipelined steps to stay in
    # shared memory and registers.
    bh = max(16, cm.next_pow2(ch))
    bc = max(16, min(64, cm.next_pow2(c), cm.prev_pow2(max(1, 4096 // bh))))
    small = bh <= 32
    cm.launcher(_wgrad_kernel)[(triton.cdiv(c, bc),)](dz2, hid, dz1, m, dw1, db1, dw2, db2, n, c, ch,
                                                      BLOCK_K=64 if small else 16, BLOCK_C=bc, BLOCK_H=bh,
                                                      num_warps=4 if bh <= 64 else 8, num_stages=3 if small else 1)
    return dmean, dw1, db1, dw2, db2


# --------------------------------------------------------------------------- registration
def _squeeze_excite_fake(r, w1, b1, w2, b2):
    n, c = r.shape[:2]
    return r.new_empty((n, c)), r.new_empty((n, c), dtype=torch.float32)


@cm.register_op("squeeze_excite_nc", fake=_squeeze_excite_fake)
def _squeeze_excite_op(r: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                       b2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (gate s in r's dtype, float32 means m kept for backward)."""
    return _forward(r, w1, b1, w2, b2)


def _squeeze_excite_backward_fake(ds, r, m, w1, b1, w2, b2):
    return (r.new_empty(r.shape[:2]), w1.new_empty(w1.shape), b1.new_empty(b1.shape),
            w2.new_empty(w2.shape), b2.new_empty(b2.shape))


# Both ops are named "_nc" since the backward returns the r-gradient as (N, C): before, the
# backward op returned the whole map, and torch's compile caches key a graph on its forward
# ops' names and schemas, not on a custom op's backward (pytorch/pytorch#144344), so a cache
# written by the earlier ops would hand back a backward expecting the map.
@cm.register_op("squeeze_excite_backward_nc", fake=_squeeze_excite_backward_fake)
def _squeeze_excite_backward_op(
        ds: torch.Tensor, r: torch.Tensor, m: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
        w2: torch.Tensor, b2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(ds, r, m, w1, b1, w2, b2)


def _setup_context(ctx, inputs, output):
    r, w1, b1, w2, b2 = inputs
    ctx.mark_non_differentiable(output[1])
    # r itself is saved only for its shape, strides and dtype; its values are not read.
    ctx.save_for_backward(r, output[1], w1, b1, w2, b2)


def _autograd_backward(ctx, ds, _dm):
    r, m, w1, b1, w2, b2 = ctx.saved_tensors
    dmean, dw1, db1, dw2, db2 = _squeeze_excite_backward_op(ds, r, m, w1, b1, w2, b2)
    return dmean[:, :, None, None].expand(r.shape), dw1, db1, dw2, db2


_squeeze_excite_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public API
def squeeze_excite_eager(r, w1, b1, w2, b2):
    """The eager twin in plain PyTorch (parameters cast to r's dtype)."""
    d = r.dtype
    m = r.mean((2, 3))
    hidden = F.gelu(F.linear(m, w1.to(d), b1.to(d)))
    return torch.sigmoid(F.linear(hidden, w2.to(d), b2.to(d)))


def squeeze_excite(r: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                   b2: torch.Tensor, backend=None) -> torch.Tensor:
    """sigmoid(fc2(GELU(fc1(mean of r over H, W)))): the (N, C) gate, in r's dtype.

    r: (N, C, H, W) float32/float16/bfloat16, contiguous or channels_last.
    w1: (Ch, C), b1: (Ch,), w2: (C, Ch), b2: (C,): nn.Linear layouts, contiguous, any of
    those dtypes. Differentiable in all five; gradients come in each input's dtype.
    """
    cm.check_tensor("r", r, ndim=4)
    dev = r.device
    cm.check_tensor("w1", w1, ndim=2, device=dev)
    cm.check_tensor("b1", b1, ndim=1, device=dev)
    cm.check_tensor("w2", w2, ndim=2, device=dev)
    cm.check_tensor("b2", b2, ndim=1, device=dev)
    n, c = r.shape[:2]
    ch = w1.shape[0]
    cm.check_shape("w1", w1, (ch, c))
    cm.check_shape("b1", b1, (ch,))
    cm.check_shape("w2", w2, (c, ch))
    cm.check_shape("b2", b2, (c,))
    if ch == 0 or r.shape[2] * r.shape[3] == 0:
        raise ValueError(f"squeeze_excite needs a hidden size and H*W above 0; got Ch={ch}, "
                         f"shape {tuple(r.shape)}")
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        cm.check_contiguous(name, t)
    cm.layout_4d("r", r)
    backend = cm.resolve_backend(backend, r)
    if backend == "eager":
        return squeeze_excite_eager(r, w1, b1, w2, b2)
    return _squeeze_excite_op(r, w1, b1, w2, b2)[0]
