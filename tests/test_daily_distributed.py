"""Many processes: `torchrun --nproc_per_node=K run.py --runs N` spreads the runs,
gathers them over torch.distributed (gloo here, on the CPU) and rank 0 alone
reports; one process behaves exactly like plain run.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine.recipes.seed import Config
from engine.results.distributed import World, world_from_env

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data", "synthetic", "--synthetic-size", "512", "--device", "cpu", "--epochs", "2",
         "--base-width", "8", "--batch-size", "128"]


def torchrun(processes: int, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(ROOT / "run.py"), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)


def test_world_from_torchrun_variables():
    assert world_from_env({}) == World(0, 1, 0) and not world_from_env({}).distributed
    single = world_from_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert not single.distributed and list(single.my_runs(3)) == [0, 1, 2]
    second = world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert second.distributed and not second.main and list(second.my_runs(5)) == [1, 3]
    with pytest.raises(ValueError, match="torchrun"):
        world_from_env({"WORLD_SIZE": "two"})


@pytest.mark.slow
def test_two_processes_share_the_runs_and_rank0_reports_once(tmp_path):
    out = tmp_path / "runs.json"
    result = torchrun(2, *SMALL, "--runs", "3", "--json", str(out), "--plot", str(tmp_path / "runs.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [run["seed"] for run in report["runs"]] == [0, 1, 2]              # every run, distinct seeds
    assert [run["rank"] for run in report["runs"]] == [0, 1, 0]              # round robin
    assert all(run["status"] == "ok" and run["ema_accuracy"] is not None for run in report["runs"])
    assert report["world_size"] == 2 and [p["rank"] for p in report["processes"]] == [0, 1]
    assert report["summary"]["runs"] == 3 and "2 processes" in report["device"]
    assert result.stdout.count("summary over 3 run(s)") == 1 and result.stdout.count("wrote") == 2
    assert "[rank 1] run 2/3 (seed 1): final: EMA accuracy" in result.stdout
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.json", "runs.png"]   # progress files removed


@pytest.mark.slow
def test_one_process_is_plain_run_py(tmp_path):
    out = tmp_path / "runs.json"
    result = torchrun(1, *SMALL, "--json", str(out), "--seed", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(out.read_text())["runs"][0]
    assert "rank" not in run and "processes" not in result.stdout
    expected = engine.fit(Config(base_width=8, batch_size=128, epochs=2, ema_epochs=1), "synthetic",
                          synthetic_size=512, seed=5, device="cpu")
    assert run["seed"] == 5 and run["ema_accuracy"] == expected.ema_accuracy
    assert [row["train_loss"] for row in run["epochs"]] == [row["train_loss"] for row in expected.epochs]


@pytest.mark.slow
def test_a_torchrun_process_on_the_cpu_matches_one_process_with_its_thread_count(tmp_path):
    """torchrun sets OMP_NUM_THREADS=1 in each of its processes: plain run.py with the same
    setting trains the same seed to the same figures (README, Reproducibility)."""
    out = tmp_path / "runs.json"
    result = torchrun(2, *SMALL, "--runs", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    spread = json.loads(out.read_text())["runs"][0]                 # rank 0's run, seed 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    single = subprocess.run([sys.executable, str(ROOT / "run.py"), *SMALL, "--json",
                             str(tmp_path / "one.json")], cwd=ROOT, capture_output=True, text=True,
                            env={**env, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    alone = json.loads((tmp_path / "one.json").read_text())["runs"][0]
    assert spread["seed"] == alone["seed"] == 0 and spread["ema_accuracy"] == alone["ema_accuracy"]
    assert [row["train_loss"] for row in spread["epochs"]] == [row["train_loss"] for row in alone["epochs"]]
