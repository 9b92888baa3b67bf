"""The record recipe (docs/record-recipe.md): its numbers, network, initialisation,
whitening, optimizer groups and schedules, augmentation, six evaluation views, and the
engine running it (eager, Triton operations, compiled, checkpoints, command line)."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.training.data import CifarLoader, make_synthetic
from engine.training.ops import make_ops
from engine.training.optim import Optimizers
from engine.recipes import make_config
from engine.recipes.airbench94_muon import Config, Network, six_view_logits
from engine.training.train import Trainer

EAGER = make_ops("eager")


def tiny(**changes):
    """Width 8 (8, 32, 32 channels), 4 steps of 128 per epoch, 2 epochs."""
    fields = dict(base_width=8, train_images=512, batch_size=128, test_batch_size=100, epochs=2)
    return Config(**{**fields, **changes})


def test_the_recipe_s_numbers():
    c = Config()
    assert (c.batch_size, c.epochs, c.steps_per_epoch, c.total_steps) == (2000, 8, 25, 200)
    assert c.whiten_bias_steps == 75 and c.widths == (64, 256, 256) and c.test_batch_size == 2000
    assert (c.bn_eps, c.bn_momentum, c.label_smoothing, c.pad) == (1e-12, 0.4, 0.2, 2)
    assert (c.whiten_images, c.whiten_eps, c.whiten_kernel) == (5000, 5e-4, 2)
    assert (c.bias_lr, c.head_lr, c.muon_lr, c.sgd_momentum, c.muon_momentum) == (0.053, 0.67, 0.24, 0.85, 0.6)
    assert c.weight_decay == pytest.approx(2e-6 * 2000) and c.newton_schulz_steps == 3
    assert c.mean == (0.4914, 0.4822, 0.4465) and c.std == (0.2470, 0.2435, 0.2616)
    assert make_config("airbench94-muon") == c and not c.has_ema


def test_layer_output_sizes_and_parameter_counts():
    torch.manual_seed(0)
    model = Network(Config(), EAGER)
    outputs = model.features(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outputs] == [(24, 31, 31), (64, 15, 15), (256, 7, 7), (256, 3, 3)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)

    def conv(i, o):
        return i * o * 9
    expected = (24                                            # the whitening bias
                + conv(24, 64) + conv(64, 64) + 2 * 64       # group 1 and its BatchNorm biases
                + conv(64, 256) + conv(256, 256) + 2 * 256
                + conv(256, 256) + conv(256, 256) + 2 * 256
                + 256 * 10)                                   # the head, no bias
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected == 1_971_352
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"whiten.weight"} | {f"group{g}.norm{i}.weight" for g in (1, 2, 3) for i in (1, 2)}


def test_initialisation_dirac_filters_head_scale_and_float32_batchnorm():
    torch.manual_seed(1)
    config = Config(base_width=32)                            # 24 -> 32 -> 32 -> 128 -> 128 -> 128 -> 128
    model = config.build_network(EAGER, "cpu", torch.bfloat16)
    for name, conv in model.named_modules():
        if isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3):
            w = conv.weight.float()
            identity = torch.zeros_like(w[:w.shape[1]])
            torch.nn.init.dirac_(identity)
            assert torch.equal(w[:w.shape[1]], identity), name  # the first `in` filters pass their input through
            if w.shape[0] > w.shape[1]:                         # the rest keep PyTorch's default
                rest = w[w.shape[1]:]
                assert 0 < rest.abs().max() <= 1 / math.sqrt(w.shape[1] * 9) + 1e-2, name
    torch.manual_seed(1)
    head = Network(config, EAGER).head.weight
    assert head.std().item() == pytest.approx(1.0, abs=1e-6)  # divided by its own standard deviation
    for name, tensor in model.state_dict().items():           # BatchNorm float32, everything else bfloat16
        if tensor.is_floating_point():
            assert tensor.dtype == (torch.float32 if ".norm" in name else torch.bfloat16), name
    assert model.whiten.bias.requires_grad and not model.whiten.weight.requires_grad
    assert model.whiten.weight.shape == (24, 3, 2, 2) and model.whiten.bias.shape == (24,)


def test_whitening_uses_the_uncentered_second_moment_of_the_first_images_and_their_negatives():
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(30, 3, 32, 32, generator=generator) * 0.5 + 0.3       # a non-zero mean
    config = Config(base_width=8, whiten_images=20, whiten_chunk=7)
    model = config.build_network(EAGER, "cpu", torch.float32)
    config.set_whitening(model, images, EAGER)
    patches = F.unfold(images[:20].double(), 2).transpose(1, 2).reshape(-1, 12)   # only the first 20
    moment = patches.T @ patches / len(patches)                                  # uncentered
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    weight = model.whiten.weight.double().reshape(24, 12)
    torch.testing.assert_close(weight[12:], -weight[:12])
    outputs = patches @ weight[:12].T                  # what the first 12 filters compute (bias aside)
    torch.testing.assert_close(outputs.T @ outputs / len(outputs),
                               torch.diag(eigenvalues / (eigenvalues + 5e-4)), rtol=1e-4, atol=1e-5)
    signs = torch.sign((weight[:12] * eigenvectors.T).sum(1))     # each filter along its eigenvector
    torch.testing.assert_close(weight[:12], signs[:, None] * eigenvectors.T / torch.sqrt(eigenvalues + 5e-4)[:, None],
                               rtol=1e-4, atol=1e-4)


def test_groups_and_schedules_at_steps_0_74_75_199():
    config = Config(base_width=8)
    model = config.build_network(EAGER, "cpu", torch.float32)
    groups = {g.name: g for g in config.optimizer_groups(model)}
    assert list(groups) == ["whiten bias", "norm biases", "head", "filters"]
    assert groups["whiten bias"].params == [model.whiten.bias] and groups["head"].params == [model.head.weight]
    assert len(groups["norm biases"].params) == 6 and len(groups["filters"].params) == 6
    assert all(p.dim() == 4 and p.requires_grad for p in groups["filters"].params)
    assert groups["filters"].rule == "muon" and groups["filters"].newton_schulz_steps == 3
    assert groups["filters"].momentum == 0.6 and groups["filters"].weight_decay == 0
    for name, lr in (("whiten bias", 0.053), ("norm biases", 0.053), ("head", 0.67)):
        g = groups[name]
        assert (g.rule, g.momentum, g.peak_lr) == ("sgd", 0.85, lr)
        assert g.weight_decay == pytest.approx(2e-6 * 2000 / lr)
    expected = {   # step: (whiten bias, others) as multiples of each group's initial rate
        0: (1.0, 1.0), 74: (1 / 75, 1 - 74 / 200), 75: (0.0, 1 - 75 / 200), 199: (0.0, 1 / 200)}
    optimizers = Optimizers(config.optimizer_groups(model))
    for step, (bias, other) in expected.items():
        rates = optimizers.lrs_at(step)
        assert rates["whiten bias"] == pytest.approx(0.053 * bias, abs=1e-12)
        for name, lr in (("norm biases", 0.053), ("head", 0.67), ("filters", 0.24)):
            assert rates[name] == pytest.approx(lr * other)
        optimizers.set_step(step)
        assert [lr.item() for lr in optimizers.lrs] == pytest.approx(list(rates.values()), rel=1e-6, abs=1e-9)


def coded_images(n):
    """Channel 0 codes the column (8 x), channel 1 the row, channel 2 the image: a crop's
    offsets, its orientation and its source can be read back."""
    cols = np.broadcast_to(np.arange(32) * 8, (n, 32, 32))
    rows = np.broadcast_to((np.arange(32) * 8)[:, None], (n, 32, 32))
    ids = np.broadcast_to((np.arange(n) % 256)[:, None, None], (n, 32, 32))
    return np.ascontiguousarray(np.stack([cols, rows, ids], axis=-1).astype(np.uint8))


def decode(loader, images):
    """(column index, row index) of pixel (16, 16) and whether columns run backwards."""
    config = loader.config
    values = images.double() * torch.tensor(config.std, dtype=torch.float64).view(1, 3, 1, 1)
    values = (values + torch.tensor(config.mean, dtype=torch.float64).view(1, 3, 1, 1)) * 255 / 8
    values = values.round().long()
    col, row = values[:, 0, 16, 16], values[:, 1, 16, 16]
    backwards = values[:, 0, 16, 17] < values[:, 0, 16, 16]
    return col, row, backwards


def test_alternating_flips_and_translations_by_minus_2_to_2():
    n = 600
    config = Config(train_images=n, batch_size=100)
    loader = CifarLoader(coded_images(n), np.arange(n) % 10, config, True, "cpu", torch.float32)
    generator = torch.Generator().manual_seed(3)
    orientations, shifts = [], []
    for epoch in range(4):
        col, row, backwards = decode(loader, loader.augment(generator, epoch))
        orientations.append(backwards)
        # Unflipped, pixel 16 shows column 16 + dx; mirrored, column 15 - dx of the crop's source.
        dx = torch.where(backwards, 15 - col, col - 16)
        shifts.append(torch.stack([row - 16, dx], 1))
    for epoch in range(3):                   # every image changes orientation every epoch
        assert torch.equal(orientations[epoch + 1], ~orientations[epoch])
    assert 0.4 < orientations[0].double().mean() < 0.6
    shifts = torch.cat(shifts)
    for axis in (0, 1):
        values, counts = torch.unique(shifts[:, axis], return_counts=True)
        assert values.tolist() == [-2, -1, 0, 1, 2]         # 5 positions per axis
        assert counts.min() > 0.15 * len(shifts)             # about uniform
    # A fresh run draws new first-epoch coins.
    col, row, backwards = decode(loader, loader.augment(torch.Generator().manual_seed(4), 0))
    assert not torch.equal(backwards, orientations[0])


def test_an_epoch_permutes_the_augmented_images_with_their_labels():
    n = 600
    config = Config(train_images=n, batch_size=100)
    loader = CifarLoader(coded_images(n), np.arange(n) % 256, config, True, "cpu", torch.float32)
    batches = list(loader.epoch(torch.Generator().manual_seed(5), 0))
    assert len(batches) == 6 and all(len(labels) == 100 for _, labels in batches)
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    values = (images[:, 2, 16, 16].double() * config.std[2] + config.mean[2]) * 255
    assert torch.equal(values.round().long(), labels)       # each image travels with its own label
    assert not torch.equal(labels, torch.arange(n) % 256)     # shuffled
    assert sorted(labels.tolist()) == sorted((np.arange(n) % 256).tolist())


def test_six_views_against_a_slow_reference():
    torch.manual_seed(6)
    linear = torch.nn.Linear(3 * 32 * 32, 10).double()      # not mirror-symmetric

    def forward(x):
        return linear(x.flatten(1))
    images = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    expected = []
    for image in images:
        x = image[None]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views = [x, padded[..., 0:32, 0:32], padded[..., 2:34, 2:34]]
        mirrored = [0.5 * forward(v) + 0.5 * forward(v.flip(-1)) for v in views]
        expected.append(0.5 * mirrored[0] + 0.5 * (mirrored[1] + mirrored[2]) / 2)
    torch.testing.assert_close(six_view_logits(forward, images), torch.cat(expected))
    config = Config()
    assert config.evaluation_views(final=True) is six_view_logits
    assert config.evaluation_views(final=False)(forward, images).equal(forward(images))   # plain per epoch


@pytest.mark.slow
def test_the_whitening_bias_trains_for_its_steps_only():
    """Its rate is 0 from whiten_bias_steps on: after the first epoch (4 steps here) the bias
    no longer moves, while everything else keeps training."""
    config = tiny(whiten_bias_epochs=1)
    data = make_synthetic(512, seed=7, test_size=100)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32)
    trainer = Trainer(config, EAGER, "cpu", torch.float32)
    snapshots = []

    def on_step(done):
        model = trainer.kept[0]
        snapshots.append((model.whiten.bias.detach().clone(), model.head.weight.detach().clone()))
    trainer.run(train, test, seed=0, on_step=on_step, evaluate_every_epoch=False)
    assert len(snapshots) == 8
    biases = [bias for bias, _ in snapshots]
    assert not torch.equal(biases[0], biases[3])               # trained during steps 0..3
    assert all(torch.equal(biases[3], later) for later in biases[4:])   # frozen from step 4 on
    assert not torch.equal(snapshots[3][1], snapshots[7][1])   # the head still trains


def logits_and_gradients(model, images, labels):
    model.zero_grad(set_to_none=True)
    logits = model(images)
    model.config.loss(logits, labels).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_close_results(a, b, **tolerance):
    """Logits elementwise; each gradient by relative norm within rtol (the loss is a sum over
    the batch, so gradients are large and single elements may cancel)."""
    torch.testing.assert_close(a[0], b[0], **tolerance)
    for name in a[1]:
        error = float((a[1][name] - b[1][name]).norm() / a[1][name].norm().clamp_min(1e-12))
        assert error <= tolerance["rtol"], f"{name}: relative error {error:.3g}"


def test_triton_operations_give_the_eager_logits_and_gradients():
    """The network's BatchNorm-apply + GELU and its GELU run through the ops table: with the
    Triton kernels (interpreter) the logits, every gradient and the BatchNorm statistics match
    the eager operations (float32; summation order only)."""
    torch.manual_seed(8)
    config = tiny()
    eager = config.build_network(EAGER, "cpu", torch.float32)
    triton = copy.deepcopy(eager)
    triton.ops = make_ops("triton")
    for module in triton.modules():
        if hasattr(module, "ops"):
            module.ops = triton.ops
    images = torch.randn(6, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (6,))
    assert_close_results(logits_and_gradients(eager, images, labels), logits_and_gradients(triton, images, labels),
                         rtol=1e-4, atol=1e-4)
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(triton.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compiled_step_and_update_match_eager_and_runs_never_recompile():
    """Compiled, the forward + loss + backward gives the eager logits and gradients (1e-2), and the
    update of every group (Muon included) the eager update (stated tolerance: 5e-2 relative to
    the step. The Newton-Schulz iterations run in bfloat16, whose 8-bit significand rounds at
    0.4%; three iterations of chained products, fused and reordered by Inductor, round
    differently: about 2% here). A whole run then never recompiles, across the
    whitening-bias cut-off, epochs and runs, and ends where eager does (loss within 2%: Muon's
    bfloat16 rounding makes runs drift apart slowly)."""
    torch._dynamo.reset()
    config = tiny(whiten_bias_epochs=1)
    data = make_synthetic(512, seed=9, test_size=100)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32)
    eager_trainer = Trainer(config, EAGER, "cpu", torch.float32)
    trainer = Trainer(config, EAGER, "cpu", torch.float32, compile=True)
    trainer.warm_up(train, test)

    torch.manual_seed(0)
    model = config.build_network(EAGER, "cpu", torch.float32)
    images, labels = next(train.epoch(torch.Generator().manual_seed(0)))
    expected = logits_and_gradients(model, images, labels)
    model.zero_grad(set_to_none=True)
    loss, _ = trainer.forward_loss(model, images, labels)
    loss.backward()
    got = (model(images).detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    # float32, but Inductor reorders the reductions; the final max-pool sends each channel's
    # gradient to its largest value, and where two values nearly tie, a rounding difference
    # moves it: up to about 3e-3 relative on the last filters' gradients here (1e-5 elsewhere).
    assert_close_results(expected, got, rtol=1e-2, atol=1e-4)

    twin = copy.deepcopy(model)
    for reference, update in ((model, eager_trainer.update), (twin, trainer.update)):
        optimizers = Optimizers(config.optimizer_groups(reference))
        optimizers.set_step(1)
        for p, q in zip(reference.parameters(), model.parameters()):
            if p.requires_grad:
                p.grad = expected[1][[n for n, r in model.named_parameters() if r is q][0]].clone()
        before = {n: p.detach().clone() for n, p in reference.named_parameters()}
        optimizers.step(update)
    for name, p in model.named_parameters():
        step_eager, step_compiled = p.detach() - before[name], dict(twin.named_parameters())[name].detach() - before[name]
        assert float((step_eager - step_compiled).norm()) <= 5e-2 * float(step_eager.norm()) + 1e-7, name

    with torch._dynamo.config.patch(error_on_recompile=True):
        first = trainer.run(train, test, seed=0)
        trainer.run(train, test, seed=1)
    alone = eager_trainer.run(train, test, seed=0)
    assert first.epochs[0]["train_loss"] == pytest.approx(alone.epochs[0]["train_loss"], rel=2e-3)
    assert first.epochs[-1]["train_loss"] == pytest.approx(alone.epochs[-1]["train_loss"], rel=2e-2)


def test_a_run_reports_the_six_view_accuracy_and_plain_per_epoch_accuracies():
    config = tiny()
    data = make_synthetic(512, seed=10, test_size=100)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32)
    trainer = Trainer(config, EAGER, "cpu", torch.float32)
    result = trainer.run(train, test, seed=0)
    from engine.training.evaluation import evaluate, plain_logits
    assert result.ema_accuracy == result.accuracy == evaluate(result.model, test, six_view_logits)
    assert result.epochs[-1]["val_accuracy"] == evaluate(result.model, test, plain_logits)
    assert all(row["ema_val_accuracy"] is None for row in result.epochs)
    assert result.ema_model is result.model and trainer.kept[1] is None        # no EMA network
