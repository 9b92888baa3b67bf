"""Failures a researcher can fix, told as what to do instead of as tracebacks.

`check_kernels` tries the chosen operation table on a tiny network before any
training, so a kernel that cannot run here is reported at once. `explain` turns
the exceptions a run can meet (out of memory, a failed compile, a Triton
error) into one message naming the option to change; for anything else it
returns None and the caller shows the traceback (after saving what finished).
"""
from __future__ import annotations

import torch

from engine.checks import dtype_name
from engine.training.ops import Ops
from engine.training.train import OutOfMemory


class KernelError(RuntimeError):
    """The chosen kernels cannot run on this device."""


def check_kernels(ops: Ops, device, dtype, config):
    """Forward and backward of a tiny network of `config`'s recipe, then its eval forward
    and a patch covariance, through `ops`: every operation the recipe uses runs once."""
    config = config.replace(base_width=16)
    try:
        generator = torch.Generator().manual_seed(0)
        model = config.build_network(ops, device, dtype)
        images = torch.randn(2, 3, 32, 32, generator=generator).to(device, dtype)
        images = images.contiguous(memory_format=torch.channels_last)
        config.loss(model(images), torch.tensor([0, 1], device=device)).backward()
        model.eval()
        with torch.no_grad():
            model(images)
        ops.patch_covariance(images, config.whiten_kernel)
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise KernelError(f"the {ops.name} kernels cannot run on {device} in {dtype_name(dtype)} "
                          f"({type(error).__name__}: {first_line}). Use --kernels eager (their plain "
                          f"PyTorch twins, same results){', or a CUDA GPU' if ops.name == 'triton' else ''}.") from error


def _is_compile_error(error: BaseException) -> bool:
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:
        return False
    return isinstance(error, TorchDynamoException)


def _is_triton_error(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] == "triton"


def explain(error: BaseException, config, compile: bool = False) -> str | None:
    """What to do about `error`, or None when it is not one we know how to fix."""
    first_line = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, (OutOfMemory, KernelError)):
        return str(error)
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return (f"the GPU ran out of memory ({first_line}). Lower --batch-size (now {config.batch_size}) "
                f"or --whiten-chunk (now {config.whiten_chunk}), or stop other processes using the GPU.")
    if compile and _is_compile_error(error):
        return (f"torch.compile failed ({type(error).__name__}: {first_line}). Run without --compile "
                f"(eager, slower but the same recipe), or with --compile-mode default and --kernels eager.")
    if _is_triton_error(error):
        return (f"a Triton kernel failed ({type(error).__name__}: {first_line}). "
                f"Use --kernels eager (plain PyTorch twins, same results).")
    return None
