"""bench/gpu_plan.py counts one of our Triton kernels' bytes from what its Triton IR
loads and stores (Inductor's own analysis, UserDefinedTritonKernel.arg_accesses): each
tensor it loads once, each it stores once; an output is not also counted as read, an
argument it never loads (a slot filled with another tensor) is not counted, and one
tensor passed in two slots is counted once."""
import importlib.util
import os
from types import SimpleNamespace

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_plan_module():
    spec = importlib.util.spec_from_file_location("gpu_plan", os.path.join(ROOT, "bench", "gpu_plan.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Buffer:
    """What the count asks of one of Inductor's buffers: its name, sizes and dtype."""

    def __init__(self, name, size, dtype):
        self.name, self.size, self.dtype = name, size, dtype

    def get_name(self):
        return self.name

    def get_size(self):
        return self.size

    def get_dtype(self):
        return self.dtype


def kernel(arguments: dict, reads, writes):
    deps = lambda names: [SimpleNamespace(name=n) for n in names]     # noqa: E731
    accesses = SimpleNamespace(read_writes=SimpleNamespace(reads=deps(reads), writes=deps(writes)))
    return SimpleNamespace(kernel_args=arguments, arg_accesses=accesses)


def test_loads_and_stores_are_counted_once_each():
    plan = load_plan_module()
    x = Buffer("buf0", (4, 8, 5, 5), torch.float16)                   # 1600 bytes
    y = Buffer("buf1", (4, 8, 5, 5), torch.float16)
    scale = Buffer("buf2", (8,), torch.float32)                      # 32 bytes
    args = {"x_ptr": x, "res_ptr": x, "scale_ptr": scale, "y_ptr": y, "R": 100}
    # res_ptr holds x but is never loaded (no residual); y is only stored.
    assert plan.user_kernel_bytes(kernel(args, ["x_ptr", "scale_ptr"], ["y_ptr"])) == 1600 + 32 + 1600
    # Loaded through both slots: one tensor, read once.
    assert plan.user_kernel_bytes(kernel(args, ["x_ptr", "res_ptr", "scale_ptr"], ["y_ptr"])) == 1600 + 32 + 1600
    # A tensor both loaded and stored (an update in place) is read and written.
    assert plan.user_kernel_bytes(kernel(args, ["x_ptr"], ["x_ptr"])) == 2 * 1600


def test_under_torch_2_11_what_is_not_stored_to_counts_as_read():
    """torch 2.11's kernel node knows only the stored arguments (mutable_args) beside all its
    tensor arguments (inputs)."""
    plan = load_plan_module()
    x = Buffer("buf0", (4, 8, 5, 5), torch.float16)
    y = Buffer("buf1", (4, 8, 5, 5), torch.float16)
    scale = Buffer("buf2", (8,), torch.float32)
    node = SimpleNamespace(inputs=[x, x, scale, y], mutable_args=[y])
    assert plan.user_kernel_bytes(node) == 1600 + 32 + 1600


def test_a_kernel_without_the_analysis_is_one_line_naming_it():
    plan = load_plan_module()
    with pytest.raises(plan.PlanError, match="arg_accesses"):
        plan.user_kernel_bytes(SimpleNamespace(kernel_args={}))
