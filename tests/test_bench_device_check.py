"""bench/device_check.sh end to end on the CPU, at tiny sizes: the script the next GPU
session runs in its one call must not fail on its own plumbing."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_device_check_runs_every_stage_and_prints_the_summary_last(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, train_images=rng.integers(0, 256, (1024, 32, 32, 3), dtype=np.uint8),
             train_labels=rng.integers(0, 10, 1024), test_images=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8),
             test_labels=rng.integers(0, 10, 200))
    out = tmp_path / "out"
    # The script must run this interpreter (PYTHON), never whichever python3 is first on
    # PATH: a python3 that only fails is put first there.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text("#!/bin/sh\necho 'not this python3' >&2\nexit 3\n")
    (shim / "python3").chmod(0o755)
    env = dict(os.environ, PYTHON=sys.executable, PATH=f"{shim}{os.pathsep}{os.environ['PATH']}",
               DEVICE_CHECK_TIME_SCALE="20",       # plumbing, not timing: a busy CPU must not fail it
               DEVICE_CHECK_TRAIN_ARGS=f"--device cpu --base-width 8 --epochs 2 --batch-size 256 --profile-steps 2 --variants eager "
                                       f"--csv {tmp_path / 'train.csv'}",
               DEVICE_CHECK_TEST_ARGS="-k test_gelu_rejects")
    proc = subprocess.run(["bash", "bench/device_check.sh", "--quick", "--label", "tiny test data", str(data), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout[proc.stdout.index("device check summary"):]
    assert "bench/train.py: exit 0" in summary and "kernel tests (CUDA): exit 0" in summary
    assert "bench/train.py --recipe airbench94-muon: exit 0" in summary
    assert "recipe: seed, data: tiny test data" in summary and "recipe: airbench94-muon, data: tiny test data" in summary
    assert summary.count("\neager ") == 2
    assert "profile seed/eager: 2 steps" in summary and "profile airbench94-muon/eager: 2 steps" in summary
    assert "passed" in summary                                   # the kernel tests' result line
    assert "profile airbench94-muon/eager: 2 steps" in (out / "summary.txt").read_text()
    for name, recipe in (("train.json", "seed"), ("train_airbench94-muon.json", "airbench94-muon")):
        results = json.loads((out / name).read_text())
        assert results["recipe"] == recipe
        assert results["variants"]["eager"]["summary"]["runs"] == 2 and "profile" in results["variants"]["eager"]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, f"the device tool brings back 8 files at most: {sorted(p.name for p in files)}"
