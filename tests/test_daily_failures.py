"""Failures: a diverging run stops within a few steps and the others go on; out of
memory, a failed compile, kernels that cannot run and a missing GPU get messages
saying what to do; finished runs are never lost."""
import json

import pytest
import torch

import engine
from engine import cli
from engine.recipes.seed import Config, lr_factor
from engine.training.data import CifarLoader, make_synthetic
from engine.errors import explain
from engine.training.ops import make_ops
from engine.training.optim import Optimizers
from engine.training.train import FiniteLossCheck, OutOfMemory, RunResult, Trainer, TrainingDiverged

SMALL = ["--data", "synthetic", "--synthetic-size", "512", "--device", "cpu", "--epochs", "2",
         "--base-width", "8", "--batch-size", "128"]


def fake_run(fail_seeds=(), error=None):
    """A stand-in for Trainer.run: instant results, TrainingDiverged for `fail_seeds`,
    `error` raised on the second call."""
    calls = []

    def run(self, train, test, seed, on_epoch=None, on_step=None, **kwargs):
        calls.append(seed)
        if error is not None and len(calls) == 2:
            raise error
        if seed in fail_seeds:
            raise TrainingDiverged("the training loss became NaN or infinite at step 3", step=3, lr=0.25,
                                   epochs=[])
        row = {"epoch": 1, "train_loss": 1.5, "train_accuracy": 0.4, "val_accuracy": 0.5,
               "ema_val_accuracy": 0.55, "seconds": 0.01}
        on_step(1)
        on_epoch(row)
        return RunResult(seed=seed, accuracy=0.5, ema_accuracy=0.55 + seed / 100, train_seconds=0.01,
                         total_seconds=0.02, epochs=[row])
    return run


def test_nan_loss_stops_the_run_within_a_few_steps_naming_step_and_lr():
    config = Config(base_width=8, train_images=512, batch_size=128, epochs=2, ema_epochs=1, lr=1e30)
    with pytest.raises(TrainingDiverged) as caught:
        engine.fit(config, make_synthetic(512, seed=0), device="cpu")
    error = caught.value
    assert 1 <= error.step <= 4                 # CPU: checked every step
    assert error.lr == pytest.approx(config.lr * lr_factor(error.step - 1, config))
    assert f"at step {error.step} of 8" in str(error) and "learning rate" in str(error) and "--lr" in str(error)


def test_finite_check_reports_the_step_and_rate():
    config = Config(train_images=1024, batch_size=128, epochs=2, ema_epochs=1, base_width=8)
    model = config.build_network(make_ops("eager"), "cpu", torch.float32)
    check = FiniteLossCheck(torch.device("cpu"), config, Optimizers(config.optimizer_groups(model)))
    check(torch.tensor(3.0), 1)
    check(torch.tensor(5.0), 2)
    with pytest.raises(TrainingDiverged, match=r"at step 3 of 16 \(epoch 1; finite up to step 2\)") as caught:
        check(torch.tensor(float("inf")), 3)
    assert caught.value.step == 3 and caught.value.lr == pytest.approx(config.lr * lr_factor(2, config))
    assert f"other group {caught.value.lr:.4g}, bias group" in str(caught.value)


def test_failed_run_is_recorded_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "run", fake_run(fail_seeds=(1,)))
    out = tmp_path / "runs.json"
    code = cli.main([*SMALL, "--runs", "3", "--json", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "run 2 (seed 1) failed" in captured.err and "going on with the next run" in captured.err
    assert "summary over 2 of 3 run(s)" in captured.out and "(1 failed)" in captured.out
    report = json.loads(out.read_text())
    assert [r["status"] for r in report["runs"]] == ["ok", "failed", "ok"]
    failed = report["runs"][1]
    assert failed["seed"] == 1 and failed["step"] == 3 and failed["lr"] == 0.25 and "NaN" in failed["error"]
    assert report["summary"]["runs"] == 2 and report["summary"]["failed_runs"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("error, words", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     ["ran out of memory", "--batch-size (now 128)", "--whiten-chunk (now 5000)"]),
    (OutOfMemory("the whitening covariance ran out of device memory; lower --whiten-chunk (now 5000 ...)"),
     ["--whiten-chunk"]),
])
def test_out_of_memory_keeps_finished_runs_and_says_what_to_lower(tmp_path, monkeypatch, capsys, error, words):
    monkeypatch.setattr(Trainer, "run", fake_run(error=error))
    out = tmp_path / "runs.json"
    assert cli.main([*SMALL, "--runs", "3", "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert all(word in captured.err for word in words) and "Traceback" not in captured.err
    assert "the runs that finished are kept" in captured.err
    report = json.loads(out.read_text())
    assert [r["seed"] for r in report["runs"]] == [0] and report["errors"][0]["rank"] == 0


def test_whitening_out_of_memory_names_the_chunk(monkeypatch):
    config = Config(base_width=8, train_images=512, batch_size=128, epochs=2, ema_epochs=1)
    data = make_synthetic(512, seed=0)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32)
    trainer = Trainer(config, make_ops("eager"), "cpu", torch.float32)

    def no_memory(config, model, images, ops):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(Config, "set_whitening", no_memory)
    with pytest.raises(OutOfMemory, match=r"lower --whiten-chunk \(now 5000"):
        trainer.run(train, test, seed=0)


def test_unknown_error_still_writes_the_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "run", fake_run(error=ZeroDivisionError("a bug")))
    out = tmp_path / "runs.json"
    with pytest.raises(ZeroDivisionError):              # the traceback is the bug report...
        cli.main([*SMALL, "--runs", "3", "--json", str(out), "--quiet"])
    report = json.loads(out.read_text())                # ...but the finished run is written first
    assert [r["seed"] for r in report["runs"]] == [0]
    assert "ZeroDivisionError: a bug" in report["errors"][0]["error"]


@pytest.mark.slow
def test_interrupt_summarises_the_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "run", fake_run(error=KeyboardInterrupt()))
    out = tmp_path / "runs.json"
    assert cli.main([*SMALL, "--runs", "3", "--json", str(out)]) == 130
    report = json.loads(out.read_text())
    assert report["interrupted"] is True and [r["seed"] for r in report["runs"]] == [0]
    out = capsys.readouterr().out
    assert "summary over 1 of 3 run(s)" in out and "(2 not run)" in out          # what was asked, not only what ran


def test_failed_compile_says_to_run_without_it(monkeypatch, capsys):
    from torch._dynamo.exc import TorchDynamoException

    def broken_warm_up(self, train, test):
        raise TorchDynamoException("backend 'inductor' raised: no C++ compiler")
    monkeypatch.setattr(Trainer, "warm_up", broken_warm_up)
    assert cli.main([*SMALL, "--compile"]) == 1
    err = capsys.readouterr().err
    assert "torch.compile failed" in err and "without --compile" in err and "Traceback" not in err


def test_kernels_that_cannot_run_say_what_to_use(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)   # triton on a CPU tensor: not possible
    assert cli.main([*SMALL, "--kernels", "triton"]) == 1
    err = capsys.readouterr().err
    assert "the triton kernels cannot run on cpu" in err and "Use --kernels eager" in err
    assert "Traceback" not in err


def test_triton_errors_are_explained():
    error = type("CompilationError", (Exception,), {"__module__": "triton.compiler.errors"})("bad tile")
    message = explain(error, Config())
    assert "a Triton kernel failed" in message and "--kernels eager" in message
    assert explain(ValueError("other"), Config()) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_says_use_cpu(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["--data", "synthetic", "--device", "cuda"])
    assert caught.value.code == 2
    assert "CUDA is not available on this machine; use --device cpu" in capsys.readouterr().err
