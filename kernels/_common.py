"""What every operation shares: backend choice, operator registration, input
checks, output allocation, launch sizes and the GELU math used inside several kernels.

Nothing here launches a kernel. Each operation's file holds its own kernels,
launch wrapper, autograd and `torch.library` registration.
"""
import inspect
import os
from contextlib import contextmanager
from typing import Callable

import torch
import triton
import triton.language as tl

BACKENDS = ("eager", "triton")

# Elementwise kernels take float32, float16 and bfloat16; they load, compute in
# float32 and store in the input's dtype.
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Namespace of every `torch.library` custom op in this package.
LIB = "cifar_speedrun"


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _squeeze_interpreter_loop_bounds():
    """triton 3.6's interpreter reads a loop bound given at run time (`range(n)` over a kernel
    argument) with int() on a one-element NumPy array, which NumPy 2.4 and later refuse
    ("only 0-dimensional arrays can be converted to Python scalars"); triton 3.8 squeezes
    the array first. Where the installed interpreter still does it the old way, its tensor
    patching is wrapped so that the bound is squeezed too. Newer triton and GPUs: no change."""
    from triton.runtime import interpreter
    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    try:
        old_way = patch_tensor is not None and "int(self.handle.data)" in inspect.getsource(patch_tensor)
    except (OSError, TypeError):            # no source to read: leave the interpreter as it is
        old_way = False
    if not old_way:
        return

    def patch_tensor_squeezing_bounds(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    interpreter._patch_lang_tensor = patch_tensor_squeezing_bounds


if interpreting():
    _squeeze_interpreter_loop_bounds()


def default_backend(tensor: torch.Tensor) -> str:
    """'triton' for CUDA tensors (and CPU tensors under TRITON_INTERPRET=1), else 'eager'."""
    if tensor.is_cuda or (tensor.device.type == "cpu" and interpreting()):
        return "triton"
    return "eager"


def resolve_backend(backend, tensor: torch.Tensor) -> str:
    """Checks `backend` and returns the one to use for `tensor`."""
    if backend is None:
        return default_backend(tensor)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {BACKENDS} (or None for the default)")
    if backend == "triton" and not tensor.is_cuda:
        if not (tensor.device.type == "cpu" and interpreting()):
            raise ValueError(
                f"backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
                f"before triton is imported; got a tensor on {tensor.device}")
    return backend


# --------------------------------------------------------------------------- registration
def register_op(name: str, fake: Callable):
    """Decorator: registers a launch function (typed tensors in, new tensors out, every
    kernel launched as `launcher(kernel)[grid](...)`) as the operator `cifar_speedrun::name`.

    On GPUs it becomes a `torch.library.triton_op`: torch.compile traces through it and
    Inductor launches the kernels from its own generated code, with no Python dispatch per
    call and nothing in the way of CUDA graphs; the launch function, traced, is its fake.
    Under TRITON_INTERPRET=1 (CPU, CI) a triton_op cannot be traced (the interpreter would
    run the kernel on fake tensors), so it becomes a `torch.library.custom_op` with `fake`
    as its fake function: Inductor keeps it as one opaque call and the kernels run in the
    interpreter. Kernels must call their @triton.jit helpers by bare names (`cast_to`, not
    `cm.cast_to`): Inductor re-emits each kernel's source with the helpers it names."""
    def register(launch: Callable):
        qualified = f"{LIB}::{name}"
        if interpreting():
            op = torch.library.custom_op(qualified, launch, mutates_args=())
            op.register_fake(fake)
            return op
        return torch.library.triton_op(qualified, launch, mutates_args=())
    return register


def launcher(kernel):
    """What a launch function calls as `launcher(kernel)[grid](...)`: for a compiled
    kernel `wrap_triton(kernel)`, so that a triton_op traced by torch.compile records the
    launch; for the interpreter's kernels (TRITON_INTERPRET=1) the kernel itself, since their
    launch function is an opaque custom_op that is never traced (and torch 2.11's
    wrap_triton refuses them). Decided by the kernel's own type, not the environment."""
    if not isinstance(kernel, triton.runtime.JITFunction):
        return kernel
    return torch.library.wrap_triton(kernel)


# --------------------------------------------------------------------------- checks
def check_tensor(name, t, *, ndim=None, dtypes=FLOAT_DTYPES, device=None):
    """TypeError for a non-tensor or a wrong dtype, ValueError for a wrong rank or device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of {names}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")


def check_shape(name, t, shape):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {tuple(shape)}")


def is_dense(t: torch.Tensor) -> bool:
    """True when the elements fill one gap-free, non-overlapping block of memory
    (any dimension order): a flat kernel may then walk it as t.numel() values."""
    dims = sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1)
    expected = 1
    for st, sz in dims:
        if st != expected:
            return False
        expected *= sz
    return True


def layout_4d(name, t) -> bool:
    """For an (N, C, H, W) tensor: False when contiguous, True when channels_last.
    Anything else (gaps, overlaps, other dimension orders) is a ValueError."""
    if t.is_contiguous():
        return False
    if t.is_contiguous(memory_format=torch.channels_last):
        return True
    raise ValueError(
        f"{name} with shape {tuple(t.shape)} and strides {t.stride()} is neither contiguous nor "
        f"dense channels_last; call .contiguous() or .contiguous(memory_format=torch.channels_last)")


def check_contiguous(name, t):
    if not t.is_contiguous():
        raise ValueError(f"{name} with shape {tuple(t.shape)} and strides {t.stride()} must be contiguous")


def same_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` (same shape as the dense `ref`) with exactly `ref`'s strides: copied only if needed.
    Incoming gradients can be expanded, transposed or in another memory format."""
    if all(a == b for a, b, s in zip(t.stride(), ref.stride(), ref.shape) if s != 1):
        return t
    out = torch.empty_like(ref, dtype=t.dtype)
    out.copy_(t)
    return out


# --------------------------------------------------------------------------- outputs
# Tests switch this on so that every output and scratch buffer starts as NaN (an
# integer one as -1): an element a kernel forgets to write then fails the comparison.
_POISON = False


@contextmanager
def poisoned_outputs(on: bool = True):
    global _POISON
    old, _POISON = _POISON, on
    try:
        yield
    finally:
        _POISON = old


def _poison(t: torch.Tensor) -> torch.Tensor:
    """NaN in a float buffer; -1 (no valid index) in an integer one."""
    if _POISON:
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t


def empty_like(t, dtype=None):
    """Uninitialised tensor with `t`'s shape and exact strides (t must be dense)."""
    return _poison(torch.empty_like(t, dtype=dtype))


def empty(shape, dtype, device, channels_last=False):
    """Uninitialised tensor, contiguous or (4-d, channels_last) channels_last. (Made with
    explicit strides: under torch.compile, torch.empty(memory_format=...) came out of
    Inductor filled, one more write of the whole tensor.)"""
    if channels_last:
        n, c, h, w = shape
        return _poison(torch.empty_strided(shape, (h * w * c, 1, w * c, c), dtype=dtype, device=device))
    return _poison(torch.empty(shape, dtype=dtype, device=device))


# --------------------------------------------------------------------------- launch sizes
def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def prev_pow2(n: int) -> int:
    return 1 << max(0, int(n).bit_length() - 1)


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors (1 in the interpreter, where programs run one by one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def persistent_programs(blocks: int, device: torch.device, per_sm: int = 4) -> int:
    """Programs for a grid-stride loop over `blocks` blocks: a few per SM, never more than blocks.
    In the interpreter a handful, so that the loop is exercised."""
    cap = per_sm * num_sms(device) if device.type == "cuda" else 3
    return max(1, min(blocks, cap))


# --------------------------------------------------------------------------- stores
# The interpreter (triton 3.8) converts float32 to bfloat16 by truncation, where
# GPUs round to nearest even: in the interpreter, round by hand so that the tests
# see what a GPU computes. On GPUs this is a plain cast.
_INTERPRET_BF16_FIX = tl.constexpr(interpreting())


@triton.jit
def cast_to(x, dtype: tl.constexpr):
    """float32 x to `dtype` with round-to-nearest-even (also in the interpreter)."""
    if _INTERPRET_BF16_FIX and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


# --------------------------------------------------------------------------- GELU math
# Exact GELU and its derivative in float32, from tl.erf / tl.exp, which exist
# both on GPUs and in the interpreter (libdevice does not).
# (0.7071... = 1/sqrt(2), 0.3989... = 1/sqrt(2*pi))


@triton.jit
def gelu_f32(z):
    """GELU(z) = z * Phi(z), with Phi the standard normal CDF."""
    return 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))


@triton.jit
def gelu_grad_f32(z):
    """d GELU / dz = Phi(z) + z * phi(z)."""
    cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
    pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
    return cdf + z * pdf


# --------------------------------------------------------------------------- SiLU, and the choice
# The BatchNorm kernels apply GELU or (SILU) SiLU(z) = z * sigmoid(z), whose derivative is
# sigmoid(z) * (1 + z * (1 - sigmoid(z))); sigmoid from tl.exp (0 for very negative z, no NaN).

@triton.jit
def activation_f32(z, SILU: tl.constexpr):
    """GELU(z), or SiLU(z) when SILU."""
    if SILU:
        return z / (1.0 + tl.exp(-z))
    return gelu_f32(z)


@triton.jit
def activation_grad_f32(z, SILU: tl.constexpr):
    """The derivative of activation_f32 at z."""
    if SILU:
        s = 1.0 / (1.0 + tl.exp(-z))
        return s * (1.0 + z * (1.0 - s))
    return gelu_grad_f32(z)


ACTIVATIONS = ("gelu", "silu")


def check_activation(activation) -> bool:
    """True for "silu", False for "gelu" (the kernels' SILU flag); anything else is a ValueError."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")
    return activation == "silu"
