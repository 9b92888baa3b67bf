"""The kernels as torch.compile sees them on a GPU, checked on a CPU.

On a GPU every operation is a `triton_op`: Inductor traces into it, finds each
`wrap_triton(kernel)[grid](...)` launch and re-emits the kernel's source (with
the @triton.jit helpers it calls by name) into its own generated code. CI runs
kernels in the interpreter, where operations are opaque custom ops instead, so
tests/inductor_probe.py is run in a second process without TRITON_INTERPRET to
(1) compile every operation, and the engine's whole forward + loss, and record which
kernel launches their forward and backward graphs contain (and that none clones an
argument it only reads or copies a tensor into another layout), and (2) collect the source Inductor would emit for every
kernel. Here each emitted source is loaded as a kernel of its own, swapped in for
the original and run against the eager twin: a helper Inductor failed to carry
along (a `cm.helper` call, say) fails here instead of on the GPU.
"""
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import kernels
from kernel_checks import (DEVICE, poisoned_kernel_outputs, check_against_eager,  # noqa: F401
                           make)

pytestmark = pytest.mark.slow        # one probe process for the module: the full suite only

PROBE = Path(__file__).with_name("inductor_probe.py")

EXPECTED_LAUNCHES = {           # case: (forward kernels, backward kernels)
    "gelu": (["gelu._gelu_fwd_kernel"], ["gelu._gelu_bwd_kernel"]),
    "affine_gelu channels_last": (["affine_gelu._fwd_kernel"],
                                  ["affine_gelu._bwd_cl_kernel", "affine_gelu._sum_rows_kernel"]),
    "affine_gelu nchw + residual": (["affine_gelu._fwd_kernel"],
                                    ["affine_gelu._bwd_nchw_kernel", "affine_gelu._sum_rows_kernel"]),
    "batch_norm_gelu channels_last + residual": (["affine_gelu._fwd_kernel"],
                                                 ["affine_gelu._bwd_cl_kernel", "affine_gelu._bn_finish_kernel",
                                                  "affine_gelu._bn_dx_kernel"]),
    "batch_norm_gelu channels_last, gated": (["affine_gelu._fwd_kernel"],
                                             ["affine_gelu._bwd_cl_kernel", "affine_gelu._bn_finish_kernel",
                                              "affine_gelu._bn_gate_dx_kernel"]),
    "pool_batch_norm_gelu channels_last": (["pool_batch_norm_gelu._pool_stats_kernel", "affine_gelu._fwd_kernel"],
                                           ["affine_gelu._bwd_cl_kernel", "affine_gelu._bn_finish_kernel",
                                            "pool_batch_norm_gelu._bn_dx_unpool_kernel"]),
    "pool_batch_norm_gelu channels_last, silu": (["pool_batch_norm_gelu._pool_stats_kernel", "affine_gelu._fwd_kernel"],
                                                 ["affine_gelu._bwd_cl_kernel", "affine_gelu._bn_finish_kernel",
                                                  "pool_batch_norm_gelu._bn_dx_unpool_kernel"]),
    "squeeze_excite": (["squeeze_excite._fwd_kernel"], ["squeeze_excite._bwd_kernel", "squeeze_excite._wgrad_kernel"]),
    "channel_scale": (["channel_scale._fwd_kernel"], ["channel_scale._bwd_cl_kernel"]),
    "patch_covariance": (["patch_covariance._patch_moments_kernel"], None),
}
# The network: 8 BatchNorm + GELU (stem, three in each full group, one in the short one;
# backward: the sums pass, their finish, the dx pass; in each full group the last one
# also applies the squeeze-and-excitation gate; the first of each group has the max-pool
# before it folded in: its statistics in the pool's pass, its dx pass writing the pool's
# input gradient) and 2 squeeze-and-excitation gates, each launched directly.
NETWORK_LAUNCHES = (
    {"pool_batch_norm_gelu._pool_stats_kernel": 3, "affine_gelu._fwd_kernel": 8, "squeeze_excite._fwd_kernel": 2},
    {"affine_gelu._bwd_cl_kernel": 8, "affine_gelu._bn_finish_kernel": 8, "affine_gelu._bn_dx_kernel": 3,
     "pool_batch_norm_gelu._bn_dx_unpool_kernel": 3, "affine_gelu._bn_gate_dx_kernel": 2,
     "squeeze_excite._bwd_kernel": 2, "squeeze_excite._wgrad_kernel": 2},
)


@pytest.fixture(scope="module")
def probe():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(PROBE)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"inductor_probe.py failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(EXPECTED_LAUNCHES))
def test_compiled_graphs_launch_the_kernels_directly(probe, case):
    forward, backward = EXPECTED_LAUNCHES[case]
    graphs = probe["graphs"][case]
    assert graphs["forward"] == {"launches": forward, "opaque": [], "cloned": [], "copies": 0}
    if backward is None:
        assert "backward" not in graphs
    else:
        assert graphs["backward"] == {"launches": backward, "opaque": [], "cloned": [], "copies": 0}


def test_compiled_network_step_launches_every_kernel_without_copies(probe):
    """The engine's step as --compile --kernels triton compiles it: every operation a
    direct kernel launch, no opaque call, no argument cloned, no layout copy inserted."""
    graphs = probe["graphs"]["network step"]
    for kind, expected in zip(("forward", "backward"), NETWORK_LAUNCHES):
        g = graphs[kind]
        assert Counter(g["launches"]) == expected, kind
        assert (g["opaque"], g["cloned"], g["copies"]) == ([], [], 0), kind


def _load_emitted(source: str, kernel_name: str, tmp_path: Path):
    """The kernel defined by Inductor's emitted `source`, loaded from a file (Triton reads
    kernels' source from their files)."""
    path = tmp_path / f"emitted_{kernel_name}.py"
    path.write_text(f"import triton\nimport triton.language as tl\n\n\n@triton.jit\n{source}\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, kernel_name)


def _exercise_gelu(dtype, channels_last):
    x = make((2, 8, 5, 5), dtype, channels_last)
    check_against_eager(kernels.gelu, kernels.gelu_eager, [x], torch.randn_like(x), dtype)


def _exercise_affine_gelu(dtype, channels_last):
    shape = (2, 40, 5, 7)
    inputs = [make(shape, dtype, channels_last), make((40,), torch.float32, scale=0.5, shift=1.0),
              make((40,), torch.float32, scale=0.5), make(shape, dtype, channels_last)]
    g = torch.randn(shape, device=DEVICE, dtype=dtype)
    check_against_eager(kernels.affine_gelu, kernels.affine_gelu_eager, inputs, g, dtype, reduced=(2, 3))


def _exercise_pool_batch_norm_gelu(dtype, channels_last):
    shape = (3, 40, 7, 6)
    inputs = [make(shape, dtype, channels_last, scale=2.0), make((40,), torch.float32, scale=0.3, shift=1.0),
              make((40,), torch.float32, scale=0.5)]
    g = torch.randn(3, 40, 3, 3, device=DEVICE, dtype=dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    for act in ("gelu", "silu"):
        check_against_eager(lambda x, w, b, backend: kernels.pool_batch_norm_gelu(x, w, b, 1e-5, backend=backend,
                                                                                  activation=act)[0],
                            lambda x, w, b: kernels.pool_batch_norm_gelu_eager(x, w, b, 1e-5, act)[0], inputs, g,
                            dtype, reduced=(2, 3))


def _exercise_squeeze_excite(dtype, channels_last):
    n, c, h, w, ch = 3, 64, 5, 5, 4
    inputs = [make((n, c, h, w), dtype, channels_last, shift=0.2), make((ch, c), dtype, scale=c ** -0.5),
              make((ch,), dtype, scale=0.5), make((c, ch), dtype, scale=ch ** -0.5 * 2), make((c,), dtype, scale=0.5)]
    g = torch.randn(n, c, device=DEVICE, dtype=dtype)
    check_against_eager(kernels.squeeze_excite, kernels.squeeze_excite_eager, inputs, g, dtype,
                        reduced=(2, 3, 4, 5))


def _exercise_channel_scale(dtype, channels_last):
    shape = (2, 24, 5, 5)
    inputs = [make(shape, dtype, channels_last), make(shape[:2], dtype, scale=0.3, shift=0.5)]
    g = torch.randn(shape, device=DEVICE, dtype=dtype)
    check_against_eager(kernels.channel_scale, kernels.channel_scale_eager, inputs, g, dtype, reduced=(2,))


def _exercise_patch_covariance(dtype, channels_last):
    images = make((4, 3, 9, 8), dtype, channels_last, requires_grad=False)
    mean, cov = kernels.patch_covariance(images, 2, backend="triton")
    mean_r, cov_r = kernels.patch_covariance(images, 2, backend="eager")
    torch.testing.assert_close(mean, mean_r, rtol=0, atol=1e-6)
    assert float((cov - cov_r).norm() / cov_r.norm()) <= 1e-5


EXERCISES = {"gelu": _exercise_gelu, "affine_gelu": _exercise_affine_gelu,
             "pool_batch_norm_gelu": _exercise_pool_batch_norm_gelu,
             "squeeze_excite": _exercise_squeeze_excite, "channel_scale": _exercise_channel_scale,
             "patch_covariance": _exercise_patch_covariance}


@pytest.mark.parametrize("module_name", list(EXERCISES))
def test_emitted_kernel_sources_compute_the_same(probe, module_name, tmp_path, monkeypatch):
    module = sys.modules[f"kernels.{module_name}"]
    emitted = {key.split(".", 1)[1]: src for key, src in probe["sources"].items()
               if key.split(".", 1)[0] == module_name}
    own = sorted(name for name in vars(module) if name.endswith("kernel") and name.startswith("_"))
    assert sorted(emitted) == own, "the probe must see every kernel of the module"
    for name, source in emitted.items():
        monkeypatch.setattr(module, name, _load_emitted(source, name, tmp_path))
    for dtype in (torch.float32, torch.float16):
        for channels_last in (False, True):
            EXERCISES[module_name](dtype, channels_last)
