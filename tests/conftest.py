"""Test set-up shared by every test file.

Triton kernels run on the CPU through Triton's interpreter. The interpreter is
chosen when triton is first imported, so the variable is set here, before any
test module imports `kernels` (importing torch does not import triton).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
