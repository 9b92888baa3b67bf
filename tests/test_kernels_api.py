"""The kernels package as the engine sees it: exports, backend choice, and
torch.compile(fullgraph=True) around the Triton custom ops (forward and backward)."""
import pytest
import torch

import kernels
from kernel_checks import DEVICE, poisoned_kernel_outputs  # noqa: F401

OPS = ("gelu", "affine_gelu", "batch_norm_gelu", "pool_batch_norm_gelu", "squeeze_excite", "channel_scale",
       "patch_covariance")


def test_exports():
    for name in OPS + ("default_backend", "BACKENDS"):
        assert hasattr(kernels, name)
    assert kernels.BACKENDS == ("eager", "triton")


def test_default_backend(monkeypatch):
    x = torch.ones(2, device=DEVICE)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.default_backend(x) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert kernels.default_backend(x) == ("triton" if x.is_cuda else "eager")
    assert kernels.default_backend(torch.ones(2)) == "eager"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        kernels.gelu(torch.ones(3), backend="triton")
    assert torch.equal(kernels.gelu(torch.zeros(3)), torch.zeros(3))      # default: eager


def test_unknown_backend():
    x = torch.ones(2, 4, 3, 3, device=DEVICE)
    s = torch.ones(4, device=DEVICE)
    calls = [
        lambda b: kernels.gelu(x, backend=b),
        lambda b: kernels.affine_gelu(x, s, s, backend=b),
        lambda b: kernels.channel_scale(x, torch.ones(2, 4, device=DEVICE), backend=b),
        lambda b: kernels.squeeze_excite(x, torch.ones(1, 4, device=DEVICE), torch.ones(1, device=DEVICE),
                                         torch.ones(4, 1, device=DEVICE), s, backend=b),
        lambda b: kernels.patch_covariance(x, backend=b),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="eager"):
            call("cuda")


def _block(x, scale, shift, w1, b1, w2, b2, images, backend):
    """A full SE group's elementwise work, plus the whitening statistics."""
    r = kernels.affine_gelu(x, scale, shift, backend=backend)
    s = kernels.squeeze_excite(r, w1, b1, w2, b2, backend=backend)
    y = kernels.channel_scale(kernels.gelu(r, backend=backend), s, backend=backend)
    y = kernels.affine_gelu(y, scale, shift, residual=r, backend=backend)
    mean, cov = kernels.patch_covariance(images, 2, backend=backend)
    return y, mean, cov


@pytest.mark.slow
def test_torch_compile_fullgraph():
    """The custom ops compile inside one graph, forward and backward (on a CPU the
    kernels then run in the interpreter), and agree with the eager twins."""
    torch._dynamo.reset()
    dt = torch.float16 if DEVICE.type == "cuda" else torch.float32
    c, ch = 32, 2
    x = torch.randn(2, c, 5, 5, device=DEVICE, dtype=dt).contiguous(memory_format=torch.channels_last)
    params = [torch.rand(c, device=DEVICE) + 0.5, torch.randn(c, device=DEVICE) * 0.1,
              torch.randn(ch, c, device=DEVICE, dtype=dt) * 0.2, torch.randn(ch, device=DEVICE, dtype=dt),
              torch.randn(c, ch, device=DEVICE, dtype=dt) * 0.5, torch.randn(c, device=DEVICE, dtype=dt)]
    images = torch.randn(3, 3, 8, 8, device=DEVICE)
    leaves = [t.requires_grad_() for t in [x] + params]

    compiled = torch.compile(lambda *a: _block(*a, images, backend="triton"), fullgraph=True)
    y, mean, cov = compiled(*leaves)
    grads = torch.autograd.grad(y.float().square().sum(), leaves)
    y_e, mean_e, cov_e = _block(*leaves, images, backend="eager")
    grads_e = torch.autograd.grad(y_e.float().square().sum(), leaves)

    tol = dict(atol=2e-2, rtol=2e-2) if dt == torch.float16 else dict(atol=1e-4, rtol=1e-4)
    assert y.stride() == x.stride()
    torch.testing.assert_close(y, y_e, **tol)
    torch.testing.assert_close(mean, mean_e)
    torch.testing.assert_close(cov, cov_e, atol=1e-6, rtol=1e-5)
    for g, g_e in zip(grads, grads_e):
        torch.testing.assert_close(g, g_e, **tol)
