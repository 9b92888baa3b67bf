"""BatchNorm's num_batches_tracked: counted once per training step for the whole network
(engine.training.layers.count_batches, one launch), not by each norm; the norms'
arithmetic and running statistics stay nn.BatchNorm2d's."""
import pytest
import torch
from torch import nn

from engine.recipes import make_config
from engine.training.layers import BatchNorm
from engine.training.ops import make_ops
from engine.training.train import Trainer


def test_the_norm_is_nn_batchnorm_without_its_counter():
    ours, theirs = BatchNorm(6, 1e-5, 0.3), nn.BatchNorm2d(6, eps=1e-5, momentum=0.3)
    with torch.no_grad():
        for module in (ours, theirs):
            module.bias.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(4, 6, 5, 5)
    assert torch.equal(ours(x), theirs(x))
    assert torch.equal(ours.running_mean, theirs.running_mean)
    assert torch.equal(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == 0 and int(theirs.num_batches_tracked) == 1
    ours.eval(), theirs.eval()
    assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("recipe, kernels", [
    ("seed", "eager"), ("seed", "triton"), ("airbench94-muon", "eager"), ("hiverge", "eager"),
    pytest.param("airbench94-muon", "triton", marks=pytest.mark.slow),       # the interpreter: slow
    pytest.param("hiverge", "triton", marks=pytest.mark.slow)])
def test_each_training_step_counts_every_norm_once(recipe, kernels):
    config = make_config(recipe, base_width=8, batch_size=16, train_images=32, epochs=2)
    trainer = Trainer(config, make_ops(kernels), "cpu", torch.float32)
    model, _, optimizers = trainer.networks(config)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, BatchNorm) for m in norms)
    images = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(16) % 10
    for _ in range(3):
        trainer.train_step(model, optimizers, images, labels)
    assert [int(m.num_batches_tracked) for m in norms] == [3] * len(norms)
    model.eval()
    with torch.no_grad():
        model(images)                          # evaluation counts nothing
    assert [int(m.num_batches_tracked) for m in norms] == [3] * len(norms)
