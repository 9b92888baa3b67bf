"""Cuts of the GPU plan (bench/gpu_plan.py) that must not change the arithmetic: each is
held here to the result of the step it replaces, in eager float32 on the CPU."""
import pytest
import torch

from engine.recipes import make_config
from engine.training.data import CifarLoader, make_synthetic
from engine.training.ops import make_ops
from engine.training.optim import Group
from engine.training.train import Trainer

pytestmark = pytest.mark.slow          # Inductor compiles: whole-suite only, not the quick subset

EAGER = make_ops("eager")


def tiny_run(recipe, seen=None):
    """A tiny run (width 8, 2 epochs of 4 steps, the whitening bias training for the first
    4): the trained network's parameters; `seen` collects whether the whitening bias asked
    for a gradient at each step."""
    config = make_config(recipe, base_width=8, train_images=512, batch_size=128, test_batch_size=100,
                         epochs=2, whiten_bias_epochs=1)
    data = make_synthetic(512, seed=3, test_size=100)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32)
    trainer = Trainer(config, EAGER, "cpu", torch.float32)
    step_model = {}
    original_step = trainer.train_step

    def train_step(model, optimizers, images, labels):
        if seen is not None:
            seen.append(model.whiten.bias.requires_grad)
        step_model["model"] = model
        return original_step(model, optimizers, images, labels)
    trainer.train_step = train_step
    result = trainer.run(train, test, seed=0, evaluate_every_epoch=False)
    assert all(p.requires_grad for n, p in step_model["model"].named_parameters() if n == "whiten.bias")
    return config, {name: p.detach().clone() for name, p in result.model.named_parameters()}


@pytest.mark.parametrize("recipe", ["airbench94-muon", "hiverge"])
def test_the_whitening_bias_stops_computing_its_gradient_with_the_same_result(recipe, monkeypatch):
    seen = []
    config, cut = tiny_run(recipe, seen)
    assert config.whiten_bias_steps == 4 and config.total_steps == 8
    assert seen == [True] * 4 + [False] * 4
    monkeypatch.setattr(Group, "trains_at", lambda self, step: True)       # the step before the cut
    _, full = tiny_run(recipe)
    assert full.keys() == cut.keys()
    for name in full:
        assert torch.equal(full[name], cut[name]), name


@pytest.mark.parametrize("recipe", ["airbench94-muon", "hiverge"])
def test_the_warm_up_compiles_the_step_without_the_whitening_bias(recipe):
    """The second graph (no whitening-bias gradient) is compiled in the warm-up, which runs
    steps on both sides of the stop; never inside a timed run."""
    warm = make_config(recipe).warm_up_config()
    assert 1 <= warm.whiten_bias_steps < warm.total_steps


def test_the_ema_copies_the_batchnorm_counters_in_one_launch_with_the_same_values():
    from engine.training.train import EMA

    config = make_config("seed", base_width=8)
    network = config.build_network(EAGER, "cpu", torch.float32)
    ema = EMA(config.build_network(EAGER, "cpu", torch.float32))
    ema.update(network, 0.9)                                  # the first update copies everything
    with torch.no_grad():
        for name, value in network.state_dict().items():
            value.add_(torch.randint_like(value, 1, 5) if not value.is_floating_point() else torch.randn_like(value))
    expected = {}
    for name, value in network.state_dict().items():       # the update, tensor by tensor
        old = ema.model.state_dict()[name]
        expected[name] = old + (value - old) * 0.1 if value.is_floating_point() else value.clone()
    launched = []

    class Ops(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            launched.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))
    with Ops():
        ema.update(network, 0.9)
    for name, value in ema.model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, expected[name], rtol=1e-6, atol=1e-7), name
        else:
            assert torch.equal(value, expected[name]), name
    assert [op for op in launched if op not in ("detach", "alias")] == ["_foreach_lerp_", "_foreach_copy_"]
