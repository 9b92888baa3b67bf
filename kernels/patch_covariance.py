"""Mean and covariance of all stride-1 k x k patches of a batch of images, without
materialising the patches (the statistics behind the whitening convolution).

For images (N, C, H, W) a patch is the vector f of D = C*k*k values
x[n, c, i+di, j+dj], ordered channel, kernel row, kernel column (as
F.unfold and a conv weight (out, C, k, k)). With P = N*(H-k+1)*(W-k+1) patches:
    mean = sum(f) / P,   cov = (sum(f f^T) - P mean mean^T) / (P - 1)     (float64)

Kernel: a grid-stride loop over blocks of BLOCK_P patches (numbered image by
image). Each block is gathered straight from the images into a (BLOCK_D, BLOCK_P)
tile F (no unfold) and F F^T is accumulated by tl.dot in float32:
  float16 / bfloat16 images: the dot takes them as they are; their products are
      exact in float32, so only the float32 sums round;
  float32 / float64 images: float32 with input_precision="tf32x3" (three
      tensor-core products that together keep float32 accuracy).
Each program writes its own partial sums; the host adds them in float64, so a
program's float32 sums cover at most ~N/programs images. Memory beyond the
images: programs x D x D floats.

Raw (uncentred) moments are exact enough when the data's mean is not large
against its spread, true of images in [0, 1] and of normalised ones.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import _common as cm

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# (patches, features) tile elements and warps: tf32x3 needs many registers (a
# larger tile spills), half-precision dots do not.
TILE_F32, WARPS_F32 = 1024, 4
TILE_HALF, WARPS_HALF = 4096, 8
PER_SM = 4           # programs per SM (each walks many patch blocks)
EAGER_CHUNK = 2048   # images per unfold in the eager twin and in backward


# --------------------------------------------------------------------------- kernel
@triton.jit
def _patch_moments_kernel(x_ptr, s1_ptr, s2_ptr, N, HO, WO, D,
                          stride_n, stride_c, stride_h, stride_w,
                          K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                          ONE_TILE: tl.constexpr, DOT_F32: tl.constexpr):
    """Grid (P, TD, TD): program (p, a, b) adds patch blocks p, p+P, ... into the (a, b)
    BLOCK_D x BLOCK_D tile of partial sum(f f^T) row p (and, for b = 0, tile a of sum(f))."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    ta = tl.program_id(1)
    tb = tl.program_id(2)
    DP = tl.num_programs(1) * BLOCK_D            # padded feature count

    # feature d -> (channel, kernel row, kernel column) -> offset from the patch's corner
    da = ta * BLOCK_D + tl.arange(0, BLOCK_D)
    delta_a = (da // (K * K)) * stride_c + ((da % (K * K)) // K) * stride_h + (da % K) * stride_w
    amask = da < D
    db = tb * BLOCK_D + tl.arange(0, BLOCK_D)
    delta_b = (db // (K * K)) * stride_c + ((db % (K * K)) // K) * stride_h + (db % K) * stride_w
    bmask = db < D

    acc2 = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_D], dtype=tl.float32)
    npos = HO * WO
    # patches q = n * npos + (i * WO + j) in blocks of BLOCK_P, which may span images
    for blk in range(pid, tl.cdiv(N * npos, BLOCK_P), nprog):
        q = blk * BLOCK_P + tl.arange(0, BLOCK_P)
        qmask = q < N * npos
        n = q // npos
        pos = q % npos
        corner = n.to(tl.int64) * stride_n + (pos // WO) * stride_h + (pos % WO) * stride_w
        # (features, patches) tiles: neighbouring patches are neighbouring pixels, so
        # with patches along the fast axis the gathers coalesce.
        fa = tl.load(x_ptr + delta_a[:, None] + corner[None, :], mask=amask[:, None] & qmask[None, :], other=0.0)
        if ONE_TILE:
            fb = fa
        else:
            fb = tl.load(x_ptr + delta_b[:, None] + corner[None, :], mask=bmask[:, None] & qmask[None, :],
                         other=0.0)
        if DOT_F32:
            fa = fa.to(tl.float32)
            fb = fb.to(tl.float32)
            acc2 = tl.dot(fa, tl.trans(fb), acc2, input_precision="tf32x3")
        else:
            acc2 = tl.dot(fa, tl.trans(fb), acc2)
        acc1 += tl.sum(fa.to(tl.float32), 1)
    rows = tl.arange(0, BLOCK_D)
    out2 = s2_ptr + pid.to(tl.int64) * DP * DP + (ta * BLOCK_D + rows)[:, None] * DP + db[None, :]
    tl.store(out2, acc2)
    tl.store(s1_ptr + pid * DP + da, acc1, mask=(tb == 0) & (da < DP))


# --------------------------------------------------------------------------- launch wrapper
def _count(images, k):
    n, _, h, w = images.shape
    return n * (h - k + 1) * (w - k + 1)


def _finish(s1, s2, count):
    """float64 mean and unbiased covariance from raw sums."""
    mean = s1 / count
    cov = (s2 - count * torch.outer(mean, mean)) / (count - 1)
    return mean, 0.5 * (cov + cov.T)


def _forward(images, k):
    n, c, h, w = images.shape
    d = c * k * k
    ho, wo = h - k + 1, w - k + 1
    block_d = min(64, max(16, cm.next_pow2(d)))
    td = triton.cdiv(d, block_d)
    dp = td * block_d
    # The interpreter's dot mishandles bfloat16, so it gets float32 there.
    dot_f32 = images.dtype in (torch.float32, torch.float64) or (
        images.dtype == torch.bfloat16 and not images.is_cuda)
    tile, warps = (TILE_F32, WARPS_F32) if dot_f32 else (TILE_HALF, WARPS_HALF)
    if cm.interpreting():
        tile = 65536           # the interpreter pays per tile, not per element
    block_p = max(16, tile // block_d)
    count = _count(images, k)
    progs = cm.persistent_programs(triton.cdiv(count, block_p), images.device, per_sm=max(1, PER_SM // (td * td)))
    s1 = cm.empty((progs, dp), torch.float32, images.device)
    s2 = cm.empty((progs, dp, dp), torch.float32, images.device)
    cm.launcher(_patch_moments_kernel)[(progs, td, td)](
        images, s1, s2, n, ho, wo, d, *images.stride(),
        K=k, BLOCK_P=block_p, BLOCK_D=block_d, ONE_TILE=td == 1, DOT_F32=dot_f32,
        num_warps=warps)
    s1 = s1.double().sum(0)[:d]
    s2 = s2.double().sum(0)[:d, :d]
    return _finish(s1, s2, count)


def _backward(gmean, gcov, images, mean, k):
    """d/d images of <gmean, mean> + <gcov, cov>: each patch f gets
    (gcov + gcov^T)(f - mean)/(P - 1) + gmean/P, folded back onto the pixels."""
    n, c, h, w = images.shape
    count = _count(images, k)
    g = (gcov + gcov.T) / (count - 1)
    bias = (gmean / count - g @ mean)[:, None]
    parts = []
    for part in images.split(EAGER_CHUNK):
        f = F.unfold(part.double(), k)                         # (n, D, L)
        parts.append(F.fold(g @ f + bias, (h, w), k))
    return torch.cat(parts).to(images.dtype)


# --------------------------------------------------------------------------- registration
def _patch_covariance_fake(images, kernel_size):
    d = images.shape[1] * kernel_size * kernel_size
    return images.new_empty((d,), dtype=torch.float64), images.new_empty((d, d), dtype=torch.float64)


@cm.register_op("patch_covariance", fake=_patch_covariance_fake)
def _patch_covariance_op(images: torch.Tensor, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(images, kernel_size)


def _setup_context(ctx, inputs, output):
    ctx.kernel_size = inputs[1]
    ctx.save_for_backward(inputs[0], output[0])


def _autograd_backward(ctx, gmean, gcov):
    images, mean = ctx.saved_tensors
    if gmean is None:
        gmean = torch.zeros_like(mean)
    if gcov is None:
        gcov = mean.new_zeros((mean.numel(), mean.numel()))
    return _backward(gmean, gcov, images, mean, ctx.kernel_size), None


_patch_covariance_op.register_autograd(_autograd_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------- public API
def patch_covariance_eager(images, kernel_size=2, chunk=EAGER_CHUNK):
    """The eager twin: F.unfold in chunks of images, sums in float64."""
    k = kernel_size
    d = images.shape[1] * k * k
    s1 = images.new_zeros((d,), dtype=torch.float64)
    s2 = images.new_zeros((d, d), dtype=torch.float64)
    for part in images.split(chunk):
        f = F.unfold(part.double(), k).transpose(0, 1).reshape(d, -1)
        s1 = s1 + f.sum(1)
        s2 = s2 + f @ f.T
    return _finish(s1, s2, _count(images, k))


def patch_covariance(images: torch.Tensor, kernel_size: int = 2, backend=None):
    """(mean (D,), cov (D, D)) of all stride-1 kernel_size^2 patches, float64, on the
    images' device; D = C*k*k in unfold order; cov is unbiased (count - 1).

    images: (N, C, H, W), float16/bfloat16/float32/float64, any strides (a crop or
    channels_last view is read in place). Each call is accurate on its own; results of
    several chunks can be merged with Chan's formula. Differentiable in images.
    """
    cm.check_tensor("images", images, ndim=4, dtypes=DTYPES)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise TypeError(f"kernel_size must be a positive int, got {kernel_size!r}")
    n, c, h, w = images.shape
    if h < kernel_size or w < kernel_size:
        raise ValueError(f"images of shape {tuple(images.shape)} are smaller than kernel_size={kernel_size}")
    if _count(images, kernel_size) < 2 or c == 0:
        raise ValueError(f"images of shape {tuple(images.shape)} hold fewer than 2 patches of "
                         f"kernel_size={kernel_size}: no unbiased covariance")
    backend = cm.resolve_backend(backend, images)
    if backend == "eager":
        return patch_covariance_eager(images, kernel_size)
    return _patch_covariance_op(images, kernel_size)
