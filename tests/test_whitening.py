"""Whitening: the streamed covariance and the filters (docs/recipe.md, "Whitening initialisation")."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from engine.training.whitening import streamed_patch_statistics, whitening_filters, whitening_weight


def correlated_images(n, seed):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, 32, 32, generator=generator, dtype=torch.float64)
    smooth = F.avg_pool2d(F.pad(base, (1, 1, 1, 1), mode="reflect"), 3, stride=1)  # neighbours correlate
    mix = torch.tensor([[1.0, 0.5, 0.2], [0.3, 1.0, 0.4], [0.1, 0.6, 1.0]], dtype=torch.float64)
    return torch.einsum("dc,nchw->ndhw", mix, smooth) + 0.3


def reference_patches(images, k=2):
    return F.unfold(images.double(), k).transpose(1, 2).reshape(-1, images.shape[1] * k * k)


@pytest.mark.parametrize("chunk", [7, 40, 1000])
def test_streamed_statistics_equal_one_pass_in_float64(chunk):
    images = correlated_images(40, seed=1).float()
    mean, covariance = streamed_patch_statistics(images, 2, chunk,
                                                 lambda x, k: kernels.patch_covariance(x, k, backend="eager"))
    patches = reference_patches(images)
    torch.testing.assert_close(mean, patches.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(covariance, torch.cov(patches.T), rtol=1e-5, atol=1e-6)


def test_whitened_patches_have_identity_covariance():
    images = correlated_images(60, seed=2).float()
    patches = reference_patches(images)
    eps = 0.01
    weight = whitening_weight(images, 2, eps, 25, lambda x, k: kernels.patch_covariance(x, k, backend="eager"))
    assert weight.shape == (12, 3, 2, 2)
    whitened = patches @ weight.reshape(12, -1).T                       # what the frozen conv computes
    covariance = torch.cov(whitened.T)
    eigenvalues = torch.linalg.eigvalsh(torch.cov(patches.T)).flip(0)
    # Exactly diag(l / (l + eps)) in eigenvalue order: near the identity where l >> eps.
    torch.testing.assert_close(covariance, torch.diag(eigenvalues / (eigenvalues + eps)), rtol=1e-4, atol=1e-5)
    without_eps = whitening_weight(images, 2, 0.0, 25, lambda x, k: kernels.patch_covariance(x, k, backend="eager"))
    whitened = patches @ without_eps.reshape(12, -1).T
    torch.testing.assert_close(torch.cov(whitened.T), torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-4)


def test_filters_are_ordered_by_descending_eigenvalue():
    covariance = torch.cov(reference_patches(correlated_images(20, seed=3)).T)
    filters, eigenvalues = whitening_filters(covariance, 3, 2, 0.01)
    assert torch.all(eigenvalues[:-1] >= eigenvalues[1:])
    norms = filters.reshape(12, -1).norm(dim=1)
    torch.testing.assert_close(norms, 1 / torch.sqrt(eigenvalues + 0.01))


def test_filters_of_a_covariance_with_known_eigenpairs():
    """Against eigenpairs known by construction (no eigensolver in the reference):
    covariance = Q diag(l) Q^T, Q orthogonal; filter i must be +-q_i / sqrt(l_i + eps) in
    descending l, and a slightly negative l (rounding) counts as 0."""
    generator = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=torch.float64))
    eigenvalues = torch.tensor([5.0, 3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, -1e-10], dtype=torch.float64)
    order = torch.randperm(12, generator=generator)            # handed over in no particular order
    covariance = q[:, order] @ torch.diag(eigenvalues[order]) @ q[:, order].T
    eps = 0.01
    filters, found = whitening_filters(covariance, 3, 2, eps)
    torch.testing.assert_close(found, eigenvalues, rtol=0, atol=1e-12)
    expected = q.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]   # row i: filter i, unfold order
    rows = filters.reshape(12, 12)
    signs = torch.sign((rows * expected).sum(1))                # an eigenvector's sign is arbitrary
    torch.testing.assert_close(rows, signs[:, None] * expected, rtol=0, atol=1e-10)
