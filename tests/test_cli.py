"""The command line end to end on the CPU, and its error messages."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True,
                          text=True)


@pytest.mark.slow
def test_synthetic_training_learns_and_writes_json(tmp_path):
    out = tmp_path / "out.json"
    result = run_cli("--data", "synthetic", "--device", "cpu", "--epochs", "2", "--runs", "2",
                     "--json", str(out), "--synthetic-size", "2048", "--base-width", "16", "--batch-size", "256")
    assert result.returncode == 0, result.stderr
    assert "run 2/2 (seed 1)" in result.stdout and "summary over 2 run(s)" in result.stdout
    assert "synthetic" in result.stdout
    report = json.loads(out.read_text())
    assert [run["seed"] for run in report["runs"]] == [0, 1]
    for run in report["runs"]:
        assert run["ema_accuracy"] > 0.5 and run["accuracy"] > 0.5          # chance is 10%
        assert run["train_seconds"] > 0 and run["total_seconds"] >= run["train_seconds"]
        assert [row["epoch"] for row in run["epochs"]] == [1, 2]
    summary = report["summary"]
    assert summary["runs"] == 2
    assert summary["mean_ema_accuracy"] == pytest.approx(np.mean([r["ema_accuracy"] for r in report["runs"]]))
    assert summary["std_ema_accuracy"] == pytest.approx(np.std([r["ema_accuracy"] for r in report["runs"]], ddof=1))
    assert report["synthetic"] is True and "synthetic" in report["data_source"]
    assert report["config"]["base_width"] == 16 and report["config"]["ema_epochs"] == 1
    assert report["torch"] and "device" in report and "git_commit" in report and report["dtype"] == "float32"


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--kernels", "cuda"], "invalid choice: 'cuda' (choose from 'eager', 'triton')"),
    (["--dtype", "float64"], "invalid choice: 'float64'"),
    (["--compile-mode", "fast"], "invalid choice: 'fast'"),
    (["--runs", "0"], "must be a positive integer"),
    (["--epochs", "3", "--ema-epochs", "3"], "ema_epochs (3) must be smaller than epochs (3)"),
    (["--device", "tpu"], "not a device; use cuda, cuda:N or cpu"),
    (["--device", "meta"], "only cuda and cpu"),
])
def test_bad_arguments_get_argparse_errors(args, message):
    result = run_cli("--data", "synthetic", "--synthetic-size", "1000", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_overrides_are_reported_before_the_data_is_read(tmp_path):
    result = run_cli("--data", str(tmp_path / "missing"), "--device", "cpu", "--ema-epochs", "20")
    assert result.returncode == 2 and "ema_epochs (20) must be smaller than epochs (10)" in result.stderr
    result = run_cli("--data", "synthetic", "--synthetic-size", "100", "--device", "cpu")
    assert result.returncode == 2 and "smaller than one" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_bad_data_gets_a_clear_message(tmp_path):
    result = run_cli("--data", str(tmp_path / "missing"), "--device", "cpu")
    assert result.returncode == 2 and "--download" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_images=np.zeros((4, 32, 32, 3), np.uint8))
    result = run_cli("--data", str(bad), "--device", "cpu")
    assert result.returncode == 2 and "lacks the array" in result.stderr and "Traceback" not in result.stderr
