"""Test set-up shared by every test file.

Triton kernels run on the CPU through Triton's interpreter. The interpreter is
chosen when triton is first imported, so the variable is set here, before any
test module imports `kernels` (importing torch does not import triton).

Every test starts with torch's global random generator seeded from the test's
own name (its pytest node id), so a run sees the same inputs every time, in CI
and here, whatever other tests ran before it. To hunt for edge cases, the
environment variable CIFAR_SPEEDRUN_TEST_SEED draws other seeds:

    unset or empty   seed = crc32(node id)                      (the default)
    an integer K     seed = crc32("K:" + node id)               (one fresh set per K)
    random           as an integer K drawn once per pytest process

Each test prints its seed and K (pytest shows it beside a failure); rerun with
CIFAR_SPEEDRUN_TEST_SEED=K to see that failure again.

Inductor's CPU code is generated without SIMD (TORCHINDUCTOR_VEC_ISA_OK=0, set
before torch is imported, inherited by the tests' child processes; a value set
outside is kept): the same graphs and fusions, generated and compiled in about
half the time (the suite's compiling tests dominate it), and the same scalar code
on every CPU, whatever its vector width. Eager PyTorch keeps the CPU's own kernels.
"""
import os
import random
import zlib

os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# torch._dynamo.reset() walks the backends torch.compile has made and resets each; one made
# for a CUDA-graph mode (reduce-overhead) imports torch._inductor.cudagraph_trees as it resets.
# In a process that has not imported Inductor's compiler yet, that first import registers one
# more backend (torch.compiler.disable at module level, torch/_inductor/wrapper_benchmark.py)
# in the middle of the walk: "RuntimeError: dictionary changed size during iteration". Which
# test files share a pytest-xdist process decides whether it happens. Imported here, before
# any test, the import inside reset() is a lookup that registers nothing. (About 3 s per
# pytest process; the compiling tests import it anyway.)
import torch._inductor.cudagraph_trees  # noqa: E402,F401

SEED_VARIABLE = "CIFAR_SPEEDRUN_TEST_SEED"
SEED_BASE = pytest.StashKey[str]()


def seed_base(setting: str) -> str:
    """The K mixed into every test's seed ('' for the default) from the variable's value."""
    setting = setting.strip()
    if setting == "random":
        return str(random.SystemRandom().randrange(2 ** 31))
    if setting and not setting.lstrip("-").isdigit():
        raise pytest.UsageError(f"{SEED_VARIABLE}={setting!r}: use an integer, 'random', or leave it unset")
    return setting


def seed_for(node_id: str, base: str) -> int:
    """The seed of the test `node_id` (a 32-bit number) under the seed base `base`."""
    return zlib.crc32(f"{base}:{node_id}".encode() if base else node_id.encode())


def pytest_configure(config):
    config.stash[SEED_BASE] = seed_base(os.environ.get(SEED_VARIABLE, ""))


@pytest.fixture(autouse=True)
def seeded_torch(request):
    """torch.manual_seed(the test's seed), printed so that a failure can be replayed."""
    base = request.config.stash[SEED_BASE]
    seed = seed_for(request.node.nodeid, base)
    torch.manual_seed(seed)
    print(f"seed={seed} ({SEED_VARIABLE}={base or '(unset)'})")
