"""Each timed interval of Trainer.run holds exactly what its convention includes.

    train_seconds  (hlb convention)       the training loops only
    total_seconds  (airbench convention)  network construction + whitening + training + the final evaluation
    an epoch row's "seconds"              that epoch's training loop

A fake clock replaces the one the CPU Timer reads, and the run's parts advance it by
amounts no sum of the others can make: building the network by 10000, the whitening
by 100, every training step by 1, every evaluation by 1000. So each interval's reading
says exactly which parts it spans, and a timer start or stop moved by one statement
(e.g. the start past the network's construction) changes it.
"""
import pytest
import torch

import engine.training.train
from engine.training.data import CifarLoader, make_synthetic
from engine.training.ops import make_ops
from engine.recipes import config_class, make_config
from engine.training.train import Trainer

NETWORK, WHITENING, STEP, EVALUATION = 10000.0, 100.0, 1.0, 1000.0
SMALL = {"seed": dict(base_width=8, train_images=20, batch_size=10, test_batch_size=10, epochs=2, ema_epochs=1),
         "airbench94-muon": dict(base_width=8, train_images=20, batch_size=10, test_batch_size=10, epochs=2,
                                 whiten_bias_epochs=1),
         "hiverge": dict(base_width=8, train_images=20, batch_size=10, test_batch_size=10, epochs=2,
                         whiten_bias_epochs=1, whiten_images=20)}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.mark.parametrize("recipe", list(SMALL))
def test_each_interval_spans_exactly_its_convention(recipe, monkeypatch):
    """Evaluated after every epoch: only the last epoch's final evaluation is timed, and
    only under total_seconds."""
    config = make_config(recipe, **SMALL[recipe])
    data = make_synthetic(config.train_images, seed=0, test_size=10)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32)
    trainer = Trainer(config, make_ops("eager"), "cpu", torch.float32)

    clock, calls = FakeClock(), {"networks": 0, "whitening": 0, "steps": 0, "evaluations": 0}
    monkeypatch.setattr(engine.training.train, "time", clock)     # what the CPU Timer reads

    def advancing(original, amount, name):
        def advance(*args, **kwargs):
            result = original(*args, **kwargs)
            clock.now += amount
            calls[name] += 1
            return result
        return advance

    cls = config_class(recipe)
    monkeypatch.setattr(Trainer, "networks", advancing(Trainer.networks, NETWORK, "networks"))
    monkeypatch.setattr(cls, "set_whitening", advancing(cls.set_whitening, WHITENING, "whitening"))
    monkeypatch.setattr(Trainer, "train_step", advancing(Trainer.train_step, STEP, "steps"))
    monkeypatch.setattr(Trainer, "evaluate", advancing(Trainer.evaluate, EVALUATION, "evaluations"))

    result = trainer.run(train, test, seed=0, evaluate_every_epoch=True)

    steps = config.total_steps
    assert calls["networks"] == 1 and calls["whitening"] == 1 and calls["steps"] == steps
    assert calls["evaluations"] >= config.epochs
    assert result.train_seconds == steps * STEP, "train_seconds: the training loops and nothing else"
    assert result.total_seconds == NETWORK + WHITENING + steps * STEP + EVALUATION, \
        "total_seconds: the network's construction, the whitening, the training loops and the one final evaluation"
    assert [row["seconds"] for row in result.epochs] == [config.steps_per_epoch * STEP] * config.epochs
