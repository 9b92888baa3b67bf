"""kernels.patch_covariance: mean and covariance of all stride-1 k x k patches.

Checked against float64 (the eager twin sums unfolded patches in float64, and
torch.cov on explicitly unfolded patches checks the twin itself) on over a
million patches, and against the eager twin on odd shapes, strides and kernel sizes.
"""
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernel_checks import DEVICE, poisoned_kernel_outputs  # noqa: F401

# float32 accumulation against float64: relative (Frobenius) error of cov, absolute error
# of mean. (The interpreter lands near 1e-6; an H200's tensor cores, whose float32
# accumulation rounds more coarsely, near 4e-6 for float16 / bfloat16 images.)
COV_RTOL = 1e-5
MEAN_ATOL = 1e-6


def _images(n, c=3, h=32, w=32, dtype=torch.float32, offset=0.0):
    """Images with correlated neighbours and channels (a covariance with structure)."""
    base = torch.randn(n, 1, h + 1, w + 1, device=DEVICE)
    smooth = F.avg_pool2d(base, 2, stride=1)                       # (n, 1, h, w)
    x = smooth * torch.linspace(0.5, 1.5, c, device=DEVICE)[:, None, None] + 0.5 * torch.randn(n, c, h, w, device=DEVICE)
    return (x + offset).to(dtype)


def _check(images, k, rtol=COV_RTOL, atol=MEAN_ATOL):
    mean, cov = kernels.patch_covariance(images, k, backend="triton")
    mean_r, cov_r = kernels.patch_covariance(images, k, backend="eager")    # float64 sums
    d = images.shape[1] * k * k
    assert mean.dtype == cov.dtype == torch.float64 and mean.shape == (d,) and cov.shape == (d, d)
    assert mean.device == images.device
    assert torch.isfinite(cov).all() and torch.isfinite(mean).all()
    assert (mean - mean_r).abs().max() <= atol, f"mean off by {(mean - mean_r).abs().max():.3g}"
    err = float((cov - cov_r).norm() / cov_r.norm())
    assert err <= rtol, f"cov relative error {err:.3g} > {rtol}"
    assert torch.equal(cov, cov.T)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_patch_covariance_million_patches(dtype):
    images = _images(1100, dtype=dtype)                  # 1100 * 31 * 31 = 1,057,100 patches
    _check(images, 2)


def test_eager_twin_matches_torch_cov():
    """The reference itself: feature order of F.unfold / a conv weight, unbiased covariance."""
    images = _images(5, c=2, h=6, w=5, dtype=torch.float64)
    patches = F.unfold(images, 3).transpose(1, 2).reshape(-1, 2 * 9)       # (count, D)
    mean, cov = kernels.patch_covariance(images.float(), 3, backend="eager")
    mean_t, cov_t = kernels.patch_covariance(images.float(), 3, backend="triton")
    ref = patches.float().double()
    torch.testing.assert_close(mean, ref.mean(0))
    torch.testing.assert_close(cov, torch.cov(ref.T))
    torch.testing.assert_close(cov_t, torch.cov(ref.T), rtol=1e-5, atol=1e-6)
    # feature d = (c, kernel row, kernel column): channel 1, row 2, column 0 is feature 9 + 6
    ref_feature = images[:, 1, 2:, :3].float().double().reshape(-1).mean()
    torch.testing.assert_close(mean_t[15], ref_feature)


@pytest.mark.parametrize("case", [
    ((3, 5, 6, 7), 3, torch.float32),      # k = 3, D = 45
    ((2, 20, 5, 5), 2, torch.float32),     # D = 80: several feature tiles
    ((4, 3, 9, 4), 1, torch.float16),      # k = 1: plain channel covariance
    ((1, 3, 2, 3), 2, torch.bfloat16),     # 2 patches
    ((2, 3, 32, 32), 2, torch.float64),
], ids=str)
def test_patch_covariance_odd(case):
    shape, k, dtype = case
    _check(_images(shape[0], *shape[1:], dtype=dtype), k)


def test_patch_covariance_strided_views():
    """channels_last and cropped views are read in place."""
    images = _images(6, h=38, w=38)
    _check(images.contiguous(memory_format=torch.channels_last), 2)
    _check(images[:, :, 3:35, 2:34], 2)


def test_patch_covariance_offset_data():
    """Raw float32 moments on data far from zero (mean 3, spread about 1) lose about a
    factor E[x^2] / var = 10 against centred data (images in [0, 1] lose about 4):
    a documented limit, hence the looser bound. Normalised images are centred."""
    _check(_images(50, offset=3.0), 2, rtol=3e-4, atol=1e-5)


def test_patch_covariance_chunks_merge():
    """Per-chunk results merge (Chan et al.) into the statistics of the whole set."""
    images = _images(12, h=8, w=8)
    parts = [kernels.patch_covariance(p, 2, backend="triton") for p in images.split([5, 7])]
    counts = [p.shape[0] * 7 * 7 for p in images.split([5, 7])]
    (ma, ca), (mb, cb) = parts
    na, nb = counts
    n = na + nb
    delta = mb - ma
    mean = ma + delta * nb / n
    m2 = ca * (na - 1) + cb * (nb - 1) + torch.outer(delta, delta) * na * nb / n
    mean_r, cov_r = kernels.patch_covariance(images, 2, backend="eager")
    torch.testing.assert_close(mean, mean_r, atol=1e-6, rtol=0)
    torch.testing.assert_close(m2 / (n - 1), cov_r, atol=1e-6, rtol=1e-5)


def test_patch_covariance_gradient():
    images = _images(2, c=2, h=5, w=6).requires_grad_()
    gm, gc = torch.randn(8, device=DEVICE, dtype=torch.float64), torch.randn(8, 8, device=DEVICE, dtype=torch.float64)
    grads = []
    for backend in ("triton", "eager"):
        mean, cov = kernels.patch_covariance(images, 2, backend=backend)
        grads.append(torch.autograd.grad((mean * gm).sum() + (cov * gc).sum(), images)[0])
    assert grads[0].dtype == images.dtype
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_patch_covariance_rejects_bad_input():
    f = kernels.patch_covariance
    x = torch.randn(2, 3, 4, 4, device=DEVICE)
    with pytest.raises(ValueError, match="smaller than kernel_size"):
        f(x, 5, backend="triton")
    with pytest.raises(ValueError, match="fewer than 2 patches"):
        f(x[:1], 4, backend="triton")
    with pytest.raises(TypeError, match="kernel_size"):
        f(x, 2.0, backend="triton")
    with pytest.raises(TypeError, match="kernel_size"):
        f(x, 0, backend="triton")
    with pytest.raises(ValueError, match="dimensions"):
        f(x[0], 2, backend="triton")
    with pytest.raises(TypeError, match="dtype"):
        f(x.to(torch.uint8), 2, backend="triton")
