"""The library face (`import engine`), the README's example, checkpoints and
reproducibility: the same seed gives bit-identical weights, in one process and
across processes (the command line's checkpoint against the library's run)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import engine
from engine.results.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from engine.recipes.seed import Config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Config(base_width=8, batch_size=128, epochs=2, ema_epochs=1)
SIZE = 1024                                      # synthetic training images (8 steps per epoch)
CLI_ARGS = ["--data", "synthetic", "--synthetic-size", str(SIZE), "--device", "cpu", "--epochs", "2",
            "--base-width", "8", "--batch-size", "128", "--seed", "3"]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True,
                          text=True)


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One command-line run with --save, --json, --quiet and --deterministic (seed 3)."""
    out = tmp_path_factory.mktemp("cli")
    result = run_cli(*CLI_ARGS, "--quiet", "--deterministic", "--save", str(out / "model.pt"),
                     "--json", str(out / "runs.json"))
    assert result.returncode == 0, result.stderr
    return out, result


def test_import_engine_is_cheap_and_lists_its_api():
    code = "import sys, engine; assert 'torch' not in sys.modules, 'torch imported'; print(engine.__all__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in ("fit", "evaluate", "CifarLoader", "Config", "load_checkpoint", "save_checkpoint"):
        assert name in result.stdout
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        engine.nope


@pytest.mark.slow
def test_readme_library_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)                  # it writes tiny.pt
    exec(compile(code, "README.md (Library)", "exec"), {})
    assert (tmp_path / "tiny.pt").is_file()


@pytest.mark.slow
def test_same_seed_is_bit_identical_in_process_and_across_processes(cli_run):
    out, _ = cli_run
    data = engine.make_synthetic(SIZE, seed=3)   # run.py draws synthetic data with --seed
    first = engine.fit(CONFIG, data, seed=3, device="cpu")
    second = engine.fit(CONFIG, data, seed=3, device="cpu")
    figures = lambda result: [{k: v for k, v in row.items() if k != "seconds"} for row in result.epochs]
    assert figures(first) == figures(second)
    assert first.ema_accuracy == second.ema_accuracy and first.accuracy == second.accuracy
    assert same_state(first.model, second.model) and same_state(first.ema_model, second.ema_model)
    # run.py in another process (with --deterministic, a no-op for the numbers on the CPU)
    report = json.loads((out / "runs.json").read_text())
    assert report["runs"][0]["ema_accuracy"] == first.ema_accuracy
    assert [row["train_loss"] for row in report["runs"][0]["epochs"]] == [row["train_loss"] for row in first.epochs]
    saved, info = load_checkpoint(str(out / "model.pt"), "cpu")
    assert same_state(saved, first.ema_model) and info["accuracy"] == first.ema_accuracy


@pytest.mark.slow
def test_quiet_prints_only_the_summary(cli_run):
    _, result = cli_run
    assert result.stdout.startswith("summary over 1 run(s)")
    assert "epoch" not in result.stdout and "wrote" not in result.stdout


@pytest.mark.slow
def test_evaluate_reproduces_the_recorded_accuracy(cli_run):
    out, _ = cli_run
    payload = read_checkpoint(str(out / "model.pt"))
    assert payload["config"]["base_width"] == 8 and payload["seed"] == 3 and payload["dtype"] == "float32"
    assert payload["data"] == {"data": "synthetic", "synthetic_size": SIZE, "seed": 3,
                               "train_subset": None, "test_subset": None}
    assert "synthetic" in payload["data_source"] and payload["kernels"] == "eager"
    assert not list(out.glob(".tmp-*"))          # the atomic write left nothing behind
    result = run_cli("evaluate", "--checkpoint", str(out / "model.pt"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    measured, recorded = re.search(r"test accuracy ([\d.]+)% .*recorded ([\d.]+)%", result.stdout).groups()
    assert measured == recorded and f"{100 * payload['accuracy']:.2f}" == recorded
    assert "difference +0.00 points" in result.stdout


@pytest.mark.slow
def test_bad_checkpoints_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not written by `run.py --save`"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cifar-speedrun checkpoint"):
        load_checkpoint(str(tmp_path / "other.pt"))
    result = run_cli("evaluate", "--checkpoint", str(tmp_path / "junk.pt"), "--device", "cpu")
    assert result.returncode == 2 and "Re-create it" in result.stderr and "Traceback" not in result.stderr


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    from engine.training.ops import make_ops
    model = CONFIG.build_network(make_ops("eager"), "cpu", torch.float32)
    path = tmp_path / "model.pt"
    save_checkpoint(str(path), model, CONFIG, accuracy=0.5)
    before = path.read_bytes()

    def broken_save(obj, file):
        file.write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(str(path), model, CONFIG, accuracy=0.9)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
