"""Bad input refused before any work, with a message that says what to do: numbers that
can only fail later, seeds the generators reject, synthetic data too big for memory,
flags that would do nothing, damaged checkpoints, wrong types at the library face; and
`run.py evaluate --json`."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
from engine import cli
from engine.results.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.checks import require_synthetic_fits
from engine.recipes.seed import Config
from engine.training.data import CifarLoader, make_synthetic
from engine.training.ops import make_ops
from engine.training.train import RunResult, Trainer

TINY = Config(base_width=8, train_images=512, batch_size=128, epochs=2, ema_epochs=1)
SMALL = ["--data", "synthetic", "--synthetic-size", "512", "--device", "cpu", "--epochs", "2",
         "--base-width", "8", "--batch-size", "128"]


def refused(capsys, argv) -> str:
    """Run the command line in-process; it must stop with status 2 before loading data. Returns stderr."""
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("change, error, message", [
    (dict(lr=math.nan), ValueError, "lr must be a finite number, got nan"),
    (dict(lr=math.inf), ValueError, "lr must be a finite number"),
    (dict(lr=-0.1), ValueError, "lr must be >= 0"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay must be >= 0"),
    (dict(weight_decay=math.nan), ValueError, "weight_decay must be a finite number"),
    (dict(cutout=33), ValueError, r"cutout \(33\) is larger than the 32x32 image"),
    (dict(pad=32), ValueError, "pad"),
    (dict(bn_eps=0.0), ValueError, "bn_eps must be positive"),
    (dict(whiten_eps=-1.0), ValueError, "whiten_eps must be positive"),
    (dict(epochs=2.5), TypeError, "epochs must be an integer, got float"),
    (dict(lr="0.1"), TypeError, "lr must be a number, got str"),
    (dict(flip=1), TypeError, "flip must be True or False"),
])
def test_numbers_that_can_only_fail_later_are_refused(change, error, message):
    with pytest.raises(error, match=message):
        Config(**change)


@pytest.mark.parametrize("args, message", [
    (["--lr", "nan"], "lr must be a finite number, got nan"),
    (["--weight-decay", "-1"], "weight_decay must be >= 0, got -1.0"),
    (["--cutout", "40"], "cutout (40) is larger than the 32x32 image"),
    (["--seed", "-1"], "--seed -1 is outside 0 .. 2**64 - 1"),
    (["--seed", str(2**64 - 1), "--runs", "2"], f"--seed {2**64 - 1} .. {2**64} (one per run) is outside"),
    (["--compile-mode", "max-autotune"], "--compile-mode has no effect without --compile"),
    (["--download"], "--download only fetches CIFAR-10 into a directory"),
])
def test_bad_values_and_pointless_flags_stop_before_the_data(capsys, monkeypatch, args, message):
    monkeypatch.setattr(cli, "load_cifar10", lambda *a, **k: pytest.fail("loaded the data"))
    assert message in refused(capsys, [*SMALL, *args])


def test_pointless_flags_for_files(capsys, tmp_path):
    npz = str(tmp_path / "cifar.npz")
    assert "--synthetic-size only applies to --data synthetic" in refused(
        capsys, ["--data", npz, "--synthetic-size", "100", "--device", "cpu"])
    assert "--download only fetches" in refused(capsys, ["--data", npz.upper(), "--download", "--device", "cpu"])


def test_synthetic_data_too_big_for_memory_is_refused(capsys):
    err = refused(capsys, [*SMALL[:2], "--synthetic-size", str(10**9), *SMALL[4:]])
    assert "--synthetic-size 1000000000 needs about" in err and "lower --synthetic-size (at most about" in err
    with pytest.raises(ValueError, match=r"needs about 8.0 GB of memory, but only 1.0 GB is free"):
        require_synthetic_fits(100_000, torch.device("cpu"), host_bytes=10**9)
    with pytest.raises(ValueError, match=r"of cuda memory, but only 0.1 GB"):
        require_synthetic_fits(100_000, torch.device("cuda"), host_bytes=10**12, device_bytes=10**8)
    require_synthetic_fits(1000, torch.device("cpu"), host_bytes=10**9)       # fits: no error


# ---- the library face ----

@pytest.fixture(scope="module")
def tiny_data():
    return make_synthetic(512, seed=0)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(config={"epochs": 2}), TypeError, r"config must be a recipe's Config \(engine.Config, engine.make_config\(...\)\), got dict"),
    (dict(data=42), TypeError, r"data must be 'synthetic', a path \(str or pathlib.Path\) or an engine.Cifar10"),
    (dict(device="gpu"), ValueError, "device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    (dict(device=3.5), TypeError, "device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got float"),
    (dict(dtype=torch.int32), ValueError, "dtype must be one of torch.float16"),
    (dict(dtype=np.float32), TypeError, "dtype must be one of"),
    (dict(seed=-3), ValueError, "seed -3 is outside 0 .. 2"),
    (dict(kernels="cuda"), ValueError, "unknown kernels 'cuda'"),
])
def test_fit_names_the_bad_argument(tiny_data, kwargs, error, message):
    arguments = {"config": TINY, "data": tiny_data, "device": "cpu", "seed": 0, **kwargs}
    with pytest.raises(error, match=message):
        engine.fit(**arguments)


@pytest.mark.parametrize("size, message", [(10**12, "synthetic_size 1000000000000 needs about"),
                                           (-1, "synthetic_size must be at least 10"),
                                           (2.5, "synthetic_size must be an integer")])
def test_fit_refuses_a_synthetic_size_that_cannot_work(size, message):
    with pytest.raises((ValueError, TypeError), match=message):
        engine.fit(TINY, "synthetic", synthetic_size=size, device="cpu")


def test_evaluate_trainer_and_loader_name_the_bad_argument(tiny_data):
    network = TINY.build_network(make_ops("eager"), "cpu", torch.float32)
    with pytest.raises(TypeError, match="model must be a network"):
        engine.evaluate("model.pt", tiny_data)
    with pytest.raises(TypeError, match="data must be a test CifarLoader or an engine.Cifar10, got ndarray"):
        engine.evaluate(network, tiny_data.test_images)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        engine.evaluate(network, tiny_data, batch_size=0)
    with pytest.raises(TypeError, match="config must be a recipe.s Config"):
        Trainer(TINY.to_dict(), make_ops("eager"), "cpu", torch.float32)
    with pytest.raises(TypeError, match="ops must be an operation table"):
        Trainer(TINY, "eager", "cpu", torch.float32)
    with pytest.raises(ValueError, match="dtype must be one of"):
        Trainer(TINY, make_ops("eager"), "cpu", torch.float64)
    with pytest.raises(TypeError, match="images_uint8 must be a numpy array"):
        CifarLoader(torch.zeros(4, 32, 32, 3), tiny_data.train_labels, TINY, True, "cpu", torch.float32)
    with pytest.raises(ValueError, match=r"images_uint8 must hold uint8 images of shape \(N, 32, 32, 3\)"):
        CifarLoader(tiny_data.train_images.astype(np.float32), tiny_data.train_labels, TINY, True, "cpu",
                    torch.float32)
    with pytest.raises(ValueError, match=r"labels must hold one integer label per image \(512,\)"):
        CifarLoader(tiny_data.train_images, tiny_data.train_labels[:10], TINY, True, "cpu", torch.float32)
    with pytest.raises(ValueError, match="device must be a CPU or CUDA device"):
        CifarLoader(tiny_data.train_images, tiny_data.train_labels, TINY, True, "meta", torch.float32)


def test_fit_takes_a_pathlib_path(tmp_path, tiny_data, monkeypatch):
    npz = tmp_path / "cifar.npz"
    np.savez(npz, train_images=tiny_data.train_images[:256], train_labels=tiny_data.train_labels[:256],
             test_images=tiny_data.test_images, test_labels=tiny_data.test_labels)
    trained_on = []

    def run(self, train, test, seed, **kwargs):
        trained_on.append(len(train.labels))
        return RunResult(seed=seed, accuracy=0.5, ema_accuracy=0.5)
    monkeypatch.setattr(Trainer, "run", run)
    engine.fit(TINY, npz, device="cpu")
    assert trained_on == [256]


# ---- checkpoints, and run.py evaluate ----

@pytest.fixture
def checkpoint(tmp_path):
    network = TINY.build_network(make_ops("eager"), "cpu", torch.float32)
    path = save_checkpoint(tmp_path / "model.pt", network, TINY, accuracy=0.125, seed=0, kernels="eager",
                           data_source="synthetic (512 train images, seed 0)",
                           data={"data": "synthetic", "synthetic_size": 512, "seed": 0})
    return Path(path)


@pytest.mark.parametrize("remove, damage, named", [
    ("state_dict", {}, "state_dict is missing or malformed"),
    ("config", {}, "config is missing or malformed"),
    (None, {"dtype": "float64"}, "dtype is missing or malformed"),
    (None, {"accuracy": "high", "data": None}, "accuracy, data are missing or malformed"),
])
def test_a_checkpoint_with_our_marker_but_lacking_fields_is_refused(checkpoint, capsys, remove, damage, named):
    payload = torch.load(checkpoint, weights_only=True)
    payload.pop(remove, None)
    payload.update(damage)
    torch.save(payload, checkpoint)
    with pytest.raises(CheckpointError, match=named + ": it is damaged"):
        load_checkpoint(checkpoint, "cpu")
    assert cli.main(["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Re-create it" in err and "Traceback" not in err


def test_evaluate_writes_json(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval" / "result.json"
    assert cli.main(["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    measured = float(capsys.readouterr().out.split("test accuracy ")[1].split("%")[0])
    assert f"{100 * report['accuracy']:.2f}" == f"{measured:.2f}"
    assert report["recorded_accuracy"] == 0.125 and report["difference"] == report["accuracy"] - 0.125
    assert report["checkpoint"] == str(checkpoint) and report["trained"]["seed"] == 0
    assert report["config"]["base_width"] == 8 and report["torch"] and report["dtype"] == "float32"
    assert "synthetic" in report["data_source"] and "device" in report


@pytest.mark.parametrize("extra, message", [
    (["--json", "{checkpoint}"], "the same file as --checkpoint"),
    (["--json", "{tmp}"], "is an existing directory"),
    (["--data-seed", "-1"], "--data-seed -1 is outside"),
    (["--data", "{tmp}/x.npz", "--data-seed", "3"], "--data-seed only applies to --data synthetic"),
    (["--data", "synthetic", "--download"], "--download only fetches"),
])
def test_evaluate_refuses_bad_outputs_and_pointless_flags(checkpoint, tmp_path, capsys, extra, message):
    before = checkpoint.read_bytes()
    extra = [arg.format(checkpoint=checkpoint, tmp=tmp_path) for arg in extra]
    assert message in refused(capsys, ["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu", *extra])
    assert checkpoint.read_bytes() == before
