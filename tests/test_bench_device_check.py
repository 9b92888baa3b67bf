"""bench/device_check.sh end to end on the CPU, at tiny sizes: the script the next GPU
session runs in its one call must not fail on its own plumbing, and a stage cut by its
time limit keeps what it finished."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_device_check_keeps_a_cut_stages_rows_and_builds_the_summary_from_them(tmp_path):
    """Both training stages are cut halfway, deterministically: bench/train.py kills itself
    (SIGKILL, as `timeout` does at a limit) right after its first variant of two ends
    (BENCH_TRAIN_KILL_AFTER_VARIANTS=1), so the second never starts. The first variant's
    JSON, CSV row, row line and profile line survive, the summary shows them, and the
    later stages still run."""
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, train_images=rng.integers(0, 256, (1024, 32, 32, 3), dtype=np.uint8),
             train_labels=rng.integers(0, 10, 1024), test_images=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8),
             test_labels=rng.integers(0, 10, 200))
    out, csv_path = tmp_path / "out", tmp_path / "train.csv"
    # The script must run this interpreter (PYTHON), never whichever python3 is first on
    # PATH: a python3 that only fails is put first there.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text("#!/bin/sh\necho 'not this python3' >&2\nexit 3\n")
    (shim / "python3").chmod(0o755)
    env = dict(os.environ, PYTHON=sys.executable, PATH=f"{shim}{os.pathsep}{os.environ['PATH']}",
               DEVICE_CHECK_TIME_SCALE="0",        # no stage limits: plumbing, not timing (a busy CPU
                                                   # must not fail it; the cut below is by count, not clock)
               BENCH_TRAIN_KILL_AFTER_VARIANTS="1",
               DEVICE_CHECK_TRAIN_ARGS=f"--device cpu --base-width 8 --epochs 2 --batch-size 256 --profile-steps 2 "
                                       f"--variants eager,compile --csv {csv_path}",
               DEVICE_CHECK_TEST_ARGS="-k test_gelu_rejects")
    proc = subprocess.run(["bash", "bench/device_check.sh", "--quick", "--label", "tiny test data", str(data), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout[proc.stdout.index("device check summary"):]
    for stage in ("bench/train.py", "bench/train.py --recipe airbench94-muon", "bench/train.py --recipe hiverge"):
        assert f"{stage}: exit 137" in summary and "CUT at its limit" in summary
    for recipe in ("seed", "airbench94-muon", "hiverge"):
        assert f"row {recipe}/eager: off, 2 runs, accuracy " in summary
        assert f"profile {recipe}/eager: 2 steps" in summary
        assert f"(recipe {recipe}: its stage ended before its final table" in summary
    assert "/compile" not in summary                             # never started
    assert "kernel tests (CUDA): exit 0" in summary and "bench/kernels.py: exit" in summary
    assert "1 passed  0 failed  0 error  0 skipped" in summary   # the per-test lines, counted
    assert "test passed: tests/test_kernels_gelu.py::test_gelu_rejects_bad_input" in (
        out / "env_and_tests.log").read_text()
    assert summary.strip() in (out / "summary.txt").read_text()
    for name, recipe in (("train.json", "seed"), ("train_airbench94-muon.json", "airbench94-muon"),
                         ("train_hiverge.json", "hiverge")):
        results = json.loads((out / name).read_text())
        assert results["recipe"] == recipe and results["partial"] is True
        assert list(results["variants"]) == ["eager"]
        assert results["variants"]["eager"]["summary"]["runs"] == 2 and "profile" in results["variants"]["eager"]
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 4 and ",seed,eager," in rows[1] and ",airbench94-muon,eager," in rows[2]
    assert ",hiverge,eager," in rows[3]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8, f"the device tool brings back 8 files at most: {sorted(p.name for p in files)}"


def test_test_outcomes_are_kept_when_pytest_is_killed(tmp_path):
    """bench/pytest_outcomes.py writes each test's line as it ends: a pytest killed
    (SIGKILL) during its third test has written the first two."""
    (tmp_path / "test_three.py").write_text(
        "import os, signal\n"
        "import pytest\n\n"
        "def test_one():\n    pass\n\n"
        "def test_two():\n    assert 1 == 2, 'one is not two'\n\n"
        "def test_three():\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    outcomes = tmp_path / "outcomes.log"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "bench.pytest_outcomes",
                           "--outcomes", str(outcomes), "test_three.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = outcomes.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("test passed: test_three.py::test_one (")
    assert lines[1].startswith("test failed: test_three.py::test_two (") and "one is not two" in lines[1]
