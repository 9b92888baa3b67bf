"""What tests/conftest.py sets up for every test process, held true."""
import sys

import torch


def test_a_compiler_reset_imports_no_module():
    """torch._dynamo.reset() resets a CUDA-graph-mode backend by importing
    torch._inductor.cudagraph_trees; a first import there can register another backend
    in the middle of reset's walk over them (a RuntimeError, in whichever pytest-xdist
    process meets it first). conftest imports it up front: the reset imports nothing."""
    torch.compile(lambda x: x + 1, mode="reduce-overhead")      # made, never called: nothing compiled
    before = set(sys.modules)
    torch._dynamo.reset()
    assert sorted(set(sys.modules) - before) == []

