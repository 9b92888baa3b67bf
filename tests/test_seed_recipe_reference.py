"""The seed recipe's whole training run against an independent float64 computation of it.

The engine trains a tiny seed-recipe network (eager operations, float64 on the CPU);
beside it, this file trains the same initial weights on the same batches with the
recipe written out again from docs/recipe.md: the network's forward pass by hand
(BatchNorm with its running statistics), the label-smoothed summed loss, Nesterov SGD
with weight decay in two groups, the one-cycle schedule, the EMA over the last epoch
and the flip-averaged evaluation. Every number of the recipe is set away from its
default, so a number that does not reach its arithmetic (a loss that reads the class
default, an EMA that blends with the per-step decay instead of the per-update one)
changes the result.

Why this holds on every CPU and thread count: both sides run in float64, where a
change of summation order moves a result by about 1e-16 of its size, and twelve steps
of training amplify that to 3e-14 of the weights here (measured), far below the bound
of 1e-8; the smallest recipe change tried, the EMA blending with the per-step decay
instead of the per-update one, moves the EMA weights by 5e-2 of their size, and the
loss reading the class's label smoothing moves the weights by 1.2. What the engine
keeps in float32 on purpose is modelled (each group's learning rate, a float32 0-dim
tensor so that one compiled update serves every step) or bounded as such (an epoch's
loss, summed in float32).
"""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import kernels
from engine.checks import DTYPES
from engine.training.data import CifarLoader, make_synthetic
from engine.training.ops import make_ops
from engine.recipes.seed import Config
from engine.training.train import Trainer

RELATIVE = 1e-8

# Every number away from its default (docs/recipe.md has the recipe's own values).
CONFIG = Config(base_width=4, train_images=128, batch_size=32, test_batch_size=100, epochs=3, ema_epochs=1,
                cutout=6, pad=2, se_reduction=4, bn_eps=1e-5, bn_momentum=0.6, logit_scale=0.3,
                whiten_eps=0.05, label_smoothing=0.3, loss_scale=0.125, lr=0.004, weight_decay=0.3,
                bias_scale=8.0, momentum=0.7, warmup_fraction=0.3, final_lr_ratio=0.2, initial_lr_ratio=0.05,
                ema_decay=0.9, ema_every=3)


# ---- the recipe written out again, in float64 ----

def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def batchnorm(x, norm, train: bool, momentum: float):
    """Batch statistics in training (and the running ones moved towards them: PyTorch's
    convention, unbiased variance), the running statistics in evaluation."""
    if train:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        n = x.numel() / x.shape[1]
        with torch.no_grad():
            norm.running_mean.mul_(1 - momentum).add_(momentum * mean)
            norm.running_var.mul_(1 - momentum).add_(momentum * var * n / (n - 1))
            norm.num_batches_tracked += 1
    else:
        mean, var = norm.running_mean, norm.running_var
    scale = norm.weight / torch.sqrt(var + norm.eps)
    return (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)


def group_forward(group, x, train, c):
    r = gelu(batchnorm(F.max_pool2d(F.conv2d(x, group.conv1.weight, padding=1), 2), group.norm1, train,
                       c.bn_momentum))
    if not group.full:
        return r
    se = group.squeeze_excite
    gate = torch.sigmoid(gelu(r.mean((2, 3)) @ se.fc1.weight.T + se.fc1.bias) @ se.fc2.weight.T + se.fc2.bias)
    y = gelu(batchnorm(F.conv2d(r, group.conv2.weight, padding=1), group.norm2, train, c.bn_momentum))
    y = F.conv2d(y, group.conv3.weight, padding=1) * gate[:, :, None, None]
    return gelu(batchnorm(y, group.norm3, train, c.bn_momentum)) + r


def forward(model, x, train, c):
    x = F.conv2d(F.conv2d(x, model.whiten.weight), model.project.weight)
    x = gelu(batchnorm(x, model.project_norm, train, c.bn_momentum))
    for group in (model.group1, model.group2, model.group3):
        x = group_forward(group, x, train, c)
    return x.amax((2, 3)) @ model.classifier.weight.T * c.logit_scale


def smoothed_loss_sum(logits, labels, c):
    """Sum over the batch of (1 - s) * -log p(label) + s * mean over classes of -log p."""
    log_p = torch.log_softmax(logits, 1)
    nll = -log_p.gather(1, labels[:, None])[:, 0]
    return ((1 - c.label_smoothing) * nll - c.label_smoothing * log_p.mean(1)).sum()


def schedule(step, c):
    """Linear from initial_lr_ratio (step 0) to 1 (step warmup - 1) to final_lr_ratio (step
    scheduled - 1), constant after."""
    warmup, scheduled = round(c.warmup_fraction * c.epochs * c.steps_per_epoch), \
        (c.epochs - c.ema_epochs) * c.steps_per_epoch
    step = min(step, scheduled - 1)
    if step < warmup:
        return c.initial_lr_ratio + (1 - c.initial_lr_ratio) * step / (warmup - 1)
    return 1 + (c.final_lr_ratio - 1) * (step - warmup + 1) / (scheduled - warmup)


def flip_accuracy(model, loader, c):
    correct = 0
    with torch.no_grad():
        for images, labels in loader.epoch():
            logits = 0.5 * (forward(model, images, False, c) + forward(model, images.flip(-1), False, c))
            correct += int((logits.argmax(1) == labels).sum())
    return correct / len(loader.labels)


def reference_run(model, ema_model, train, test, seed, c):
    """Train `model` (the engine's initial weights, float64) as the recipe says; returns
    (per-epoch (mean loss, accuracy) rows, final accuracy of the EMA network)."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    momentum_buffers = {name: torch.zeros_like(p) for name, p in trainable}
    ema_steps = [s for s in range(c.epochs * c.steps_per_epoch)
                 if s >= (c.epochs - c.ema_epochs) * c.steps_per_epoch and (s + 1) % c.ema_every == 0]
    generator = torch.Generator().manual_seed(seed)
    step, rows = 0, []
    for epoch in range(c.epochs):
        loss_total, correct = 0.0, 0
        for images, labels in train.epoch(generator, epoch):
            logits = forward(model, images, True, c)
            loss = smoothed_loss_sum(logits, labels, c)
            grads = torch.autograd.grad(loss, [p for _, p in trainable])
            with torch.no_grad():
                for (name, p), g in zip(trainable, grads):
                    is_bias = "bias" in name
                    lr = c.lr * (c.bias_scale if is_bias else 1) * schedule(step, c)
                    lr = float(torch.tensor(lr, dtype=torch.float32))   # the engine's rates: float32
                    g = g + (c.weight_decay / c.bias_scale if is_bias else c.weight_decay) * p
                    buffer = momentum_buffers[name]
                    buffer.mul_(c.momentum).add_(g)
                    p.sub_(lr * (g + c.momentum * buffer))
                if step in ema_steps:
                    ema_state, state = ema_model.state_dict(), model.state_dict()
                    first = step == ema_steps[0]
                    for key, value in state.items():
                        if first or not value.is_floating_point():
                            ema_state[key].copy_(value)
                        else:
                            decay = c.ema_decay ** c.ema_every
                            ema_state[key].copy_(decay * ema_state[key] + (1 - decay) * value)
            loss_total += float(loss.detach())
            correct += int((logits.argmax(1) == labels).sum())
            step += 1
        rows.append((loss_total / (c.steps_per_epoch * c.batch_size), correct / (c.steps_per_epoch * c.batch_size)))
    return rows, flip_accuracy(ema_model, test, c)


@pytest.fixture
def float64_allowed(monkeypatch):
    """The engine takes float16, bfloat16 and float32; float64 only here, for this check."""
    monkeypatch.setitem(DTYPES, "float64", torch.float64)


def float64_eager_ops():
    """The eager table with its twins called directly (the public kernel functions check for
    float32 and the half types only)."""
    return dataclasses.replace(make_ops("eager"), gelu=kernels.gelu_eager,
                               squeeze_excite=kernels.squeeze_excite_eager,
                               patch_covariance=kernels.patch_covariance_eager)


def engine_and_reference(config, seed=1):
    data = make_synthetic(config.train_images, seed=5, test_size=100)
    dtype = torch.float64
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", dtype)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", dtype)
    ops = float64_eager_ops()
    trainer = Trainer(config, ops, "cpu", dtype)
    result = trainer.run(train, test, seed=seed)

    torch.manual_seed(seed)                        # the engine's initial weights, drawn as it draws them
    model = config.build_network(ops, "cpu", dtype)
    ema_model = config.build_network(ops, "cpu", dtype)
    with torch.no_grad():                          # whitening: tests/test_whitening.py checks it on its own
        model.whiten.weight.copy_(result.model.whiten.weight)
    rows, ema_accuracy = reference_run(model, ema_model, train, test, seed, config)
    return result, (model, ema_model, rows, ema_accuracy)


def assert_states_close(engine_model, reference_model):
    engine_state, reference_state = engine_model.state_dict(), reference_model.state_dict()
    assert engine_state.keys() == reference_state.keys()
    for key, value in reference_state.items():
        if value.is_floating_point():
            scale = float(value.abs().max()) or 1.0
            error = float((engine_state[key] - value).abs().max())
            assert error <= RELATIVE * scale, f"{key}: off by {error:.3g} (scale {scale:.3g})"
        else:
            assert torch.equal(engine_state[key], value), key


@pytest.mark.slow
def test_the_seed_recipe_computes_what_the_recipe_says(float64_allowed):
    result, (model, ema_model, rows, ema_accuracy) = engine_and_reference(CONFIG)
    assert len(result.epochs) == len(rows) == CONFIG.epochs
    for row, (loss, accuracy) in zip(result.epochs, rows):
        # The engine sums an epoch's losses in a float32 tensor: its mean keeps float32's rounding.
        assert row["train_loss"] == pytest.approx(loss, rel=1e-6)
        assert row["train_accuracy"] == accuracy
    assert_states_close(result.model, model)
    assert_states_close(result.ema_model, ema_model)
    assert result.ema_accuracy == ema_accuracy
