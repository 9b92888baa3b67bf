"""The recipe registry and `--recipe` on the command line: names, presets, overrides that
do not apply, and a record-recipe run saved and re-evaluated end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.recipes import RECIPES, config_class, make_config
from engine.recipes import airbench94_muon, seed

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True,
                          text=True)


def test_the_recipes_and_their_presets():
    assert list(RECIPES) == ["seed", "seed-long", "airbench94-muon", "hiverge"]
    assert make_config("seed") == seed.Config()
    long = make_config("seed-long")
    assert (long.base_width, long.epochs, long.ema_epochs, long.lr) == (128, 80, 2, seed.Config().lr)
    assert make_config("seed-long", epochs=20, lr=0.002).base_width == 128          # overrides on top
    assert make_config("seed", epochs=2).ema_epochs == 1                            # the EMA fits the epochs
    assert config_class("airbench94-muon") is airbench94_muon.Config
    with pytest.raises(ValueError, match="unknown recipe 'fast'; choose one of seed, seed-long, airbench94-muon"):
        make_config("fast")
    with pytest.raises(ValueError, match="recipe airbench94-muon has no setting ema_decay"):
        make_config("airbench94-muon", ema_decay=0.9)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--ema-decay", "0.9"], "--ema-decay does not apply to --recipe airbench94-muon; drop it"),
    (["--lr", "0.1", "--cutout", "8"], "--lr, --cutout do not apply to --recipe airbench94-muon; drop them, and use "
                                       "--set muon_lr=V instead of --lr (its learning rates, one per group: "
                                       "muon_lr 0.24, head_lr 0.67, bias_lr 0.053)"),
])
def test_overrides_the_recipe_does_not_have_are_refused_before_the_data(args, message, tmp_path):
    result = run_cli("--recipe", "airbench94-muon", "--data", str(tmp_path / "missing.npz"), "--device", "cpu",
                     *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_help_lists_every_recipe_and_which_recipes_each_override_applies_to():
    result = run_cli("--help")
    text = " ".join(result.stdout.split())
    assert "--recipe {seed,seed-long,airbench94-muon,hiverge}" in text
    assert "seed-long: its long configuration, base width 128 and 80 epochs" in text
    assert "(seed 10, seed-long 80, airbench94-muon 8, hiverge 7.59)" in text                      # --epochs
    assert "EMA decay per step (seed 0.986, seed-long 0.986)" in text               # seed recipes only


@pytest.mark.slow
def test_a_record_recipe_run_is_saved_and_evaluate_rebuilds_its_network(tmp_path):
    out, model = tmp_path / "run.json", tmp_path / "model.pt"
    result = run_cli("--recipe", "airbench94-muon", "--data", "synthetic", "--synthetic-size", "512", "--device",
                     "cpu", "--base-width", "8", "--batch-size", "128", "--epochs", "2", "--json", str(out),
                     "--save", str(model))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("recipe: airbench94-muon |")
    report = json.loads(out.read_text())
    run = report["runs"][0]
    assert report["config"]["batch_size"] == 128 and report["config"]["muon_lr"] == 0.24
    assert run["ema_accuracy"] == run["accuracy"]                  # no EMA: the network is the result
    assert all(row["ema_val_accuracy"] is None for row in run["epochs"])
    saved = torch.load(model, weights_only=True)
    assert saved["recipe"] == "airbench94-muon" and "head.weight" in saved["state_dict"]
    again = run_cli("evaluate", "--checkpoint", str(model), "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert f"test accuracy {100 * run['accuracy']:.2f}%" in again.stdout and "difference +0.00 points" in again.stdout
