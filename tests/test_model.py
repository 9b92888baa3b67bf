"""The seed recipe's network (docs/recipe.md "Network"), its optimizer groups, the loss and the EMA."""
import copy

import pytest
import torch
import torch.nn.functional as F

from engine.training.ops import make_ops
from engine.training.optim import Optimizers
from engine.recipes.seed import Config, Network, loss_function, lr_factor
from engine.training.train import EMA


def network(base_width=64, kind="eager"):
    torch.manual_seed(0)
    return Network(Config(base_width=base_width), make_ops(kind))


def test_layer_output_sizes():
    model = network(base_width=16)
    outputs = model.features(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outputs] == [(8, 31, 31), (32, 15, 15), (64, 7, 7), (128, 3, 3)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_parameter_count_at_full_width():
    def bn(c):
        return c                                            # trainable bias only
    def conv(i, o, k):
        return i * o * k * k
    def se(c):
        h = c // 16
        return c * h + h + h * c + c
    expected = (conv(12, 32, 1) + bn(32)
                + conv(32, 128, 3) + bn(128) + conv(128, 128, 3) + bn(128) + conv(128, 128, 3) + bn(128) + se(128)
                + conv(128, 256, 3) + bn(256)
                + conv(256, 512, 3) + bn(512) + conv(512, 512, 3) + bn(512) + conv(512, 512, 3) + bn(512) + se(512)
                + 512 * 10)
    model = network()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == expected == 6_568_136
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    bn_weights = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert len(bn_weights) == 8
    assert frozen == {"whiten.weight"} | {f"{n}.weight" for n in bn_weights}


def test_batchnorm_settings():
    for module in network(16).modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.eps == 1e-12 and module.momentum == 0.8
            assert torch.all(module.weight == 1) and not module.weight.requires_grad
            assert torch.all(module.bias == 0) and module.bias.requires_grad


def test_optimizer_groups_lr_and_weight_decay():
    model = network(16)
    config = Config(base_width=16)
    other, bias = config.optimizer_groups(model)
    assert (other.name, bias.name) == ("other", "bias") and other.rule == bias.rule == "sgd"
    names = {id(p): n for n, p in model.named_parameters()}
    bias_names = sorted(names[id(p)] for p in bias.params)
    assert all("bias" in n for n in bias_names)
    assert len([n for n in bias_names if "norm" in n]) == 8
    assert len([n for n in bias_names if "squeeze_excite" in n]) == 4
    assert all("bias" not in names[id(p)] and p.requires_grad for p in other.params)
    assert not any(id(p) == id(model.whiten.weight) for p in other.params + bias.params)
    assert (other.peak_lr, other.weight_decay) == pytest.approx((1.15 * 1.35 / 512, 0.85 * 4.8e-4 * 512))
    assert (bias.peak_lr, bias.weight_decay) == pytest.approx((1.15 * 1.35 * 32 / 512, 0.85 * 4.8e-4 * 512 / 32))
    assert other.momentum == bias.momentum == 0.85
    for step in (0, 193, 500, 775, 969):                 # both groups follow the one-cycle schedule
        assert other.lr_at(step) == pytest.approx(config.lr * lr_factor(step, config))
        assert bias.lr_at(step) == pytest.approx(config.bias_lr * lr_factor(step, config))


def test_optimizers_write_each_group_s_rate_in_place():
    model = network(16)
    config = Config(base_width=16)
    optimizers = Optimizers(config.optimizer_groups(model))
    tensors = [lr.data_ptr() for lr in optimizers.lrs]
    optimizers.set_step(300)
    assert [lr.data_ptr() for lr in optimizers.lrs] == tensors
    assert [lr.item() for lr in optimizers.lrs] == pytest.approx(
        [config.lr * lr_factor(300, config), config.bias_lr * lr_factor(300, config)], rel=1e-6)


def test_loss_is_the_scaled_sum_of_smoothed_cross_entropies():
    torch.manual_seed(2)
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    config = Config()
    loss = loss_function(logits, labels, config)
    probabilities = F.log_softmax(logits, 1)
    target = torch.full((6, 10), 0.2 / 10)
    target[torch.arange(6), labels] += 0.8
    expected = -(target * probabilities).sum()          # a sum over samples, not a mean
    torch.testing.assert_close(loss, expected)
    half = loss_function(logits.half(), labels, config)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), expected, rtol=2e-3, atol=2e-3)


def test_ema_copies_then_blends_every_floating_entry():
    model = network(16)
    ema = EMA(copy.deepcopy(model))
    with torch.no_grad():
        for p in ema.model.parameters():
            p.fill_(123.0)
    model(torch.randn(4, 3, 32, 32))                     # moves BatchNorm running statistics
    ema.update(model, 0.5)                               # first update: an exact copy
    for (name, a), b in zip(model.state_dict().items(), ema.model.state_dict().values()):
        assert torch.equal(a, b), name
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 3, 32, 32))
    decay = 0.986 ** 2
    ema.update(model, decay)
    for name, value in model.state_dict().items():
        if value.is_floating_point():
            expected = decay * before[name] + (1 - decay) * value
            torch.testing.assert_close(ema.model.state_dict()[name], expected, msg=name)
        else:
            assert torch.equal(ema.model.state_dict()[name], value)
    assert not torch.equal(before["group1.norm1.running_mean"], ema.model.state_dict()["group1.norm1.running_mean"])


def test_set_whitening_writes_the_filters_of_the_training_images_and_keeps_the_layout():
    from engine.training.whitening import whitening_weight
    config = Config(base_width=16)
    model = config.build_network(make_ops("eager"), "cpu", torch.float32)
    images = torch.randn(40, 3, 32, 32)
    config.set_whitening(model, images, make_ops("eager"))
    expected = whitening_weight(images, 2, config.whiten_eps, config.whiten_chunk, make_ops("eager").patch_covariance)
    torch.testing.assert_close(model.whiten.weight, expected.float())
    assert model.project.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.config is config
