"""The engine's own Triton kernels, each beside an eager PyTorch twin.

Every operation takes `backend=None | "eager" | "triton"`. None picks Triton for
CUDA tensors (and for CPU tensors when TRITON_INTERPRET=1, how CI runs them) and
eager otherwise. The Triton paths are `torch.library` operators with fake
(meta) functions and autograd, so `torch.compile(fullgraph=True)` keeps whole
graphs around them: on GPUs `triton_op`s, whose kernel launches Inductor emits in
its own generated code; in Triton's CPU interpreter opaque `custom_op`s (see
`_common.register_op`). Inputs are checked before any kernel runs: a wrong device,
dtype, rank, shape or stride pattern raises a ValueError or TypeError naming it.

    gelu(x)                                     exact (erf) GELU, any dense shape
    affine_gelu(x, scale, shift, residual=None) GELU(x*scale[c] + shift[c]) (+ residual)
    batch_norm_gelu(x, weight, bias, eps, residual=None, gate=None, activation="gelu")
                                                GELU (or SiLU) of training-mode BatchNorm(x)
                                                (+ residual), its backward through the batch statistics
    pool_batch_norm_gelu(x, weight, bias, eps, activation="gelu")
                                                batch_norm_gelu(max_pool2d(x, 2), ...), the pool folded
                                                into its passes
    squeeze_excite(r, w1, b1, w2, b2)           sigmoid(fc2(GELU(fc1(mean_hw r))))
    channel_scale(x, s)                         x * s[:, :, None, None]
    patch_covariance(images, kernel_size=2)     float64 mean and covariance of k x k patches
"""
from ._common import BACKENDS, default_backend
from .affine_gelu import affine_gelu, affine_gelu_eager, batch_norm_gelu, batch_norm_gelu_eager
from .channel_scale import channel_scale, channel_scale_eager
from .gelu import gelu, gelu_eager
from .patch_covariance import patch_covariance, patch_covariance_eager
from .pool_batch_norm_gelu import pool_batch_norm_gelu, pool_batch_norm_gelu_eager
from .squeeze_excite import squeeze_excite, squeeze_excite_eager


def kernel_modules() -> dict:
    """{name: module} of every kernel file of this package (all but _common), imported: what
    tools that look for "our kernels" walk, so that a new file is never missed."""
    import importlib
    import pkgutil
    return {m.name: importlib.import_module(f"{__name__}.{m.name}")
            for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name) if m.name != "_common"}


def triton_kernels() -> dict:
    """{"module.name": its @triton.jit function} of every kernel of the kernel files (names
    ending in "kernel"; the jit helpers the kernels call are left out). Under TRITON_INTERPRET
    these are Triton's InterpretedFunctions, otherwise JITFunctions: both KernelInterfaces."""
    from triton.runtime.jit import KernelInterface
    return {f"{module_name}.{name}": value for module_name, module in kernel_modules().items()
            for name, value in vars(module).items() if isinstance(value, KernelInterface) and name.endswith("kernel")}


__all__ = [
    "BACKENDS", "default_backend", "kernel_modules", "triton_kernels",
    "gelu", "affine_gelu", "batch_norm_gelu", "pool_batch_norm_gelu", "squeeze_excite", "channel_scale",
    "patch_covariance",
    "gelu_eager", "affine_gelu_eager", "batch_norm_gelu_eager", "pool_batch_norm_gelu_eager", "squeeze_excite_eager",
    "channel_scale_eager", "patch_covariance_eager",
]
