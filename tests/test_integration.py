"""The network with the Triton kernels, and compiled (issue: `run.py --compile`).

On a CPU the Triton kernels run in Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1) and torch.compile uses Inductor's CPU backend; on a GPU the
same tests run on CUDA.
"""
import copy

import pytest
import torch

import kernels
from engine.recipes.seed import Config
from engine.training.data import CifarLoader, make_synthetic
from engine.training.ops import make_ops
from engine.recipes.seed import loss_function
from engine.training.train import EMA, Trainer
from engine.training.whitening import whitening_weight

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIG = Config(base_width=8, train_images=512, batch_size=128, test_batch_size=100, epochs=2, ema_epochs=1)
# float32 everywhere on the CPU; the only differences between the paths are summation orders.
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def make_pair(kind_a="eager", kind_b="triton", seed=0):
    weight = torch.randn(12, 3, 2, 2, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    a = CONFIG.build_network(make_ops(kind_a), DEVICE, torch.float32)
    with torch.no_grad():
        a.whiten.weight.copy_(weight)
    b = copy.deepcopy(a)
    b.ops = make_ops(kind_b)
    for module in b.modules():                 # every submodule holds the same table
        if hasattr(module, "ops"):
            module.ops = b.ops
    return a, b


def batch(n=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator).to(DEVICE).contiguous(memory_format=torch.channels_last)
    return images, torch.randint(0, 10, (n,), generator=generator).to(DEVICE)


def logits_and_grads(model, images, labels, forward=None):
    model.zero_grad(set_to_none=True)
    logits = (model if forward is None else forward)(images)
    loss_function(logits, labels, CONFIG).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


def assert_same(result_a, result_b, **tolerance):
    torch.testing.assert_close(result_a[0], result_b[0], **tolerance)
    assert result_a[1].keys() == result_b[1].keys()
    for name in result_a[1]:
        torch.testing.assert_close(result_a[1][name], result_b[1][name], **tolerance, msg=lambda m: f"{name}: {m}")


def test_triton_kernels_give_the_eager_logits_gradients_and_statistics():
    eager, triton = make_pair()
    images, labels = batch()
    assert_same(logits_and_grads(eager, images, labels), logits_and_grads(triton, images, labels), **TOLERANCE)
    for (name, a), b in zip(eager.named_buffers(), triton.buffers()):   # BatchNorm running statistics
        torch.testing.assert_close(a, b, **TOLERANCE, msg=lambda m: f"{name}: {m}")
    eager.eval(), triton.eval()
    with torch.no_grad():
        torch.testing.assert_close(eager(images), triton(images), **TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eager", "triton"])
def test_compiled_network_matches_eager(kind):
    torch._dynamo.reset()
    reference, compiled = make_pair(kind, kind)
    images, labels = batch(seed=2)
    forward = torch.compile(compiled, fullgraph=True)       # fails on any graph break in the network
    assert_same(logits_and_grads(reference, images, labels),
                logits_and_grads(compiled, images, labels, forward), **TOLERANCE)


def test_whitening_through_the_triton_covariance_equals_eager():
    images = torch.randn(30, 3, 32, 32, device=DEVICE)
    images[:, 1] += 0.5 * images[:, 0]
    eager = whitening_weight(images, 2, 0.01, 11, lambda x, k: kernels.patch_covariance(x, k, backend="eager"))
    triton = whitening_weight(images, 2, 0.01, 11, make_ops("triton").patch_covariance)
    torch.testing.assert_close(triton, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_training_learns_without_recompiling():
    # Eager twins inside the compiled step: Inductor's CPU code is fast, while the
    # interpreter would take minutes here (the Triton ops inside a compiled graph are
    # covered by test_compiled_network_matches_eager[triton]).
    torch._dynamo.reset()
    config = CONFIG.replace(train_images=1024, epochs=3)
    data = make_synthetic(config.train_images, seed=3, test_size=200)
    train = CifarLoader(data.train_images, data.train_labels, config, True, DEVICE, torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, DEVICE, torch.float32)
    trainer = Trainer(config, make_ops("eager"), DEVICE, torch.float32, compile=True)
    trainer.warm_up(train, test)
    assert trainer.compile_seconds > 0
    with torch._dynamo.config.patch(error_on_recompile=True):   # epochs, runs, train/eval: all compiled already
        first = trainer.run(train, test, seed=0)
        second = trainer.run(train, test, seed=1)
    assert first.ema_accuracy > 0.4 and second.ema_accuracy > 0.4      # chance is 10%
    assert first.epochs[-1]["train_loss"] < first.epochs[0]["train_loss"]


@pytest.mark.slow
def test_runs_reuse_the_same_tensors_and_match_a_fresh_trainer():
    """Every run trains the same kept tensors (what compiled code and CUDA graphs need),
    reset to exactly what a trainer's first run would start from: the second run of seed
    1 equals a fresh trainer's run of seed 1, and results hold copies of their own."""
    config = CONFIG.replace(train_images=512, epochs=2)
    data = make_synthetic(config.train_images, seed=5, test_size=200)
    train = CifarLoader(data.train_images, data.train_labels, config, True, DEVICE, torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, DEVICE, torch.float32)
    trainer = Trainer(config, make_ops("eager"), DEVICE, torch.float32)
    first = trainer.run(train, test, seed=0)
    kept = [t.data_ptr() for t in trainer.kept[0].state_dict().values()]
    kept += [t.data_ptr() for t in trainer.kept[2].state_tensors()]
    first_weights = copy.deepcopy(first.model.state_dict())
    second = trainer.run(train, test, seed=1)
    assert [t.data_ptr() for t in trainer.kept[0].state_dict().values()] + [
        t.data_ptr() for t in trainer.kept[2].state_tensors()] == kept
    for name, value in first.model.state_dict().items():      # not overwritten by the second run
        assert torch.equal(value, first_weights[name]), name
    alone = Trainer(config, make_ops("eager"), DEVICE, torch.float32).run(train, test, seed=1)
    assert second.ema_accuracy == alone.ema_accuracy
    assert [row["train_loss"] for row in second.epochs] == [row["train_loss"] for row in alone.epochs]
    for name, value in alone.ema_model.state_dict().items():
        assert torch.equal(second.ema_model.state_dict()[name], value), name


@pytest.mark.slow
def test_the_training_loop_updates_the_ema_after_the_release_s_steps(monkeypatch):
    """The loop, not only the rule: the EMA acts after 0-based steps 5 and 7 of a 2-epoch,
    4-steps-per-epoch run with one EMA epoch (the last step included), and nowhere else."""
    config = CONFIG.replace(train_images=512, epochs=2)
    data = make_synthetic(config.train_images, seed=5, test_size=100)
    train = CifarLoader(data.train_images, data.train_labels, config, True, DEVICE, torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, DEVICE, torch.float32)
    steps_done, updated_after = [0], []
    original = EMA.update

    def spy(self, network, decay):
        updated_after.append(steps_done[0])          # the 0-based step just taken
        return original(self, network, decay)

    monkeypatch.setattr(EMA, "update", spy)
    Trainer(config, make_ops("eager"), DEVICE, torch.float32).run(
        train, test, seed=0, on_step=lambda done: steps_done.__setitem__(0, done), evaluate_every_epoch=False)
    assert config.steps_per_epoch == 4 and updated_after == [5, 7]
