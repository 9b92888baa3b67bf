"""The 2025 record recipe (docs/hiverge-recipe.md): its numbers, what it takes from
airbench94-muon, its network, optimizer groups and Muon settings, fractional last epoch,
jitter and crops against slow references, the confidence-selected views against a slow
reference, the whitening-bias cut-off, and the compiled run without recompiles."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from engine.recipes import make_config
from engine.recipes.airbench94_muon import Config as AirbenchConfig
from engine.recipes.airbench94_muon import six_view_logits
from engine.recipes.hiverge import Config
from engine.training.data import Augmentation, CifarLoader, brightness_contrast_jitter, make_synthetic, random_crop
from engine.training.evaluation import confidence_selected, evaluate, plain_logits
from engine.training.layers import BatchNorm
from engine.training.ops import make_ops
from engine.training.optim import Optimizers
from engine.training.train import Trainer

EAGER = make_ops("eager")


def tiny(**changes):
    """Width 8, 4 steps of 128 per epoch, 2.5 epochs (10 steps, the last epoch cut at 2)."""
    fields = dict(base_width=8, train_images=512, batch_size=128, test_batch_size=100, epochs=2.5,
                  whiten_images=64, whiten_bias_epochs=0.5)
    return Config(**{**fields, **changes})


def loaders(config, seed):
    """The training and test loaders of 512 + 100 synthetic images for `config`, on the CPU."""
    data = make_synthetic(512, seed=seed, test_size=100)
    return (CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32),
            CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32))


def test_the_recipe_s_numbers():
    c = make_config("hiverge")
    assert (c.batch_size, c.steps_per_epoch, c.total_steps, c.epoch_count) == (1536, 32, 243, 8)
    assert (c.whiten_images, c.whiten_bias_steps, c.whiten_eps, c.whiten_kernel) == (960, 7, 5e-4, 2)
    assert (c.label_smoothing, c.sgd_momentum, c.bias_lr, c.head_lr) == (0.09, 0.825, 0.0573, 0.5415)
    assert (c.muon_lr, c.muon_momentum, c.newton_schulz_steps, c.muon_rescale_every) == (0.205, 0.655, 3, 4)
    assert c.newton_schulz_coefficients == (3.4576, -4.7391, 2.0843) and c.newton_schulz_eps == 1e-5
    assert c.weight_decay == pytest.approx(1.0418e-6 * 1536)
    assert c.bn_momentum == pytest.approx(0.4434) and c.bn_eps == 1e-12
    assert (c.brightness, c.contrast, c.tta_fraction, c.pad) == (0.1399, 0.1308, 0.25, 2)
    assert c.mean == AirbenchConfig.mean and c.std == AirbenchConfig.std and c.widths == (64, 256, 256)


def test_the_network_is_airbenchs_with_silu_and_float16_batchnorm():
    """Same layers and parameter counts as airbench94-muon; SiLU after each group's
    BatchNorm (the GELU after the whitening stays); in float16 the BatchNorm layers are
    float16 too."""
    torch.manual_seed(0)
    config = tiny()
    model = config.build_network(EAGER, "cpu", torch.float32)
    airbench = AirbenchConfig(**{f: getattr(config, f) for f in ("base_width", "train_images", "batch_size")})
    reference = airbench.build_network(EAGER, "cpu", torch.float32)
    assert [(n, p.shape) for n, p in model.named_parameters()] == [(n, p.shape) for n, p in reference.named_parameters()]
    assert model.group1.norm_activation is EAGER.norm_silu and reference.group1.norm_activation is EAGER.norm_gelu
    x = torch.randn(2, 8, 5, 5)
    norm = BatchNorm(8, 1e-12, 0.4434)
    torch.testing.assert_close(EAGER.norm_silu(x, norm), F.silu(F.batch_norm(x, None, None, training=True,
                                                                               eps=1e-12)))
    half = config.build_network(EAGER, "cpu", torch.float16)           # the dtypes only; nothing runs
    assert {m.weight.dtype for m in half.modules() if isinstance(m, BatchNorm)} == {torch.float16}
    assert {m.weight.dtype for m in airbench.build_network(EAGER, "cpu", torch.float16).modules()
            if isinstance(m, BatchNorm)} == {torch.float32}


def test_groups_schedules_and_muon_settings():
    config = make_config("hiverge", base_width=8)
    model = config.build_network(EAGER, "cpu", torch.float32)
    groups = {g.name: g for g in config.optimizer_groups(model)}
    assert list(groups) == ["whiten bias", "norm biases", "head", "filters"]
    wd = 1.0418e-6 * 1536
    for name, lr in (("whiten bias", 0.0573), ("norm biases", 0.0573), ("head", 0.5415)):
        g = groups[name]
        assert (g.rule, g.peak_lr, g.momentum) == ("sgd", lr, 0.825) and g.weight_decay == pytest.approx(wd / lr)
    assert [groups["whiten bias"].lr_at(s) / 0.0573 for s in (0, 6, 7, 100)] == pytest.approx([1, 1 / 7, 0, 0])
    assert groups["head"].lr_at(242) / 0.5415 == pytest.approx(1 / 243)
    muon = groups["filters"]
    assert (muon.rule, muon.peak_lr, muon.momentum, muon.newton_schulz_steps) == ("muon", 0.205, 0.655, 3)
    assert muon.newton_schulz_coefficients == (3.4576, -4.7391, 2.0843) and muon.newton_schulz_dtype is None
    assert muon.weight_decay == pytest.approx(wd) and muon.rescale_every == 4
    assert muon.lr_at(100) == pytest.approx(0.205 * (1 - 100 / 243))
    assert not any(p is model.whiten.weight for g in groups.values() for p in g.params)   # frozen


@pytest.mark.slow
def test_the_last_epoch_is_cut_at_the_recipes_step_count():
    config = tiny()
    train, test = loaders(config, seed=1)
    steps = []
    result = Trainer(config, EAGER, "cpu", torch.float32).run(train, test, seed=0, on_step=steps.append)
    assert steps == list(range(1, 11)) and [row["epoch"] for row in result.epochs] == [1, 2, 3]
    assert result.epochs[-1]["val_accuracy"] is not None and math.isfinite(result.epochs[-1]["train_loss"])


def test_the_jitter_against_a_slow_reference():
    """(x + s) * c per image with s in [-b, b], c in [1 - k, 1 + k], from the generator's
    draws; over many images the draws cover their ranges."""
    images = torch.randn(400, 3, 4, 4)
    got = brightness_contrast_jitter(images, 0.1399, 0.1308, torch.Generator().manual_seed(3))
    draws = torch.rand(400, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    shifts, scales = [], []
    for image, (u, v), out in zip(images, draws, got):
        s, c = float(u) * 0.1399, 1 + float(v) * 0.1308
        torch.testing.assert_close(out, (image + s) * c)
        shifts.append(s)
        scales.append(c)
    assert -0.1399 <= min(shifts) < -0.13 and 0.13 < max(shifts) <= 0.1399
    assert 1 - 0.1308 <= min(scales) < 0.88 and 1.12 < max(scales) <= 1 + 0.1308
    assert brightness_contrast_jitter(images[:1], 0.0, 0.0, torch.Generator()).equal(images[:1])


def test_the_loader_crops_flips_then_jitters():
    """The recipe's augmentation: crops at offsets 0..4 of the 2-pixel reflect pad (all 25
    positions used), alternating flips, then the jitter: the loader's images equal that
    sequence computed step by step from the same generator."""
    config = tiny()
    assert config.augmentation == Augmentation(pad=2, flip="alternating", brightness=0.1399, contrast=0.1308)
    data = make_synthetic(512, seed=2, test_size=100)
    loader = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    got = loader.augment(torch.Generator().manual_seed(5), epoch=0)
    generator = torch.Generator().manual_seed(5)
    flips = torch.rand(512, generator=generator) < 0.5
    crops, offsets = random_crop(loader.padded, 32, generator)
    assert set(map(tuple, offsets.tolist())) == {(r, c) for r in range(5) for c in range(5)}
    for i in (0, 7, 300):
        r, c = offsets[i].tolist()
        torch.testing.assert_close(crops[i], loader.padded[i, :, r:r + 32, c:c + 32])
    mirrored = torch.where(flips.view(-1, 1, 1, 1), crops.flip(-1), crops)
    expected = brightness_contrast_jitter(mirrored, 0.1399, 0.1308, generator)
    torch.testing.assert_close(got, expected)


def test_the_confidence_selected_views_against_a_slow_reference():
    """Plain logits for every image; the 25% whose highest softmax probability is lowest get
    airbench's six views instead: checked image by image, with batches that split the set."""
    torch.manual_seed(6)
    linear = torch.nn.Linear(3 * 32 * 32, 10).double().requires_grad_(False)

    def forward(x):
        return linear(x.flatten(1))
    images = torch.randn(40, 3, 32, 32, dtype=torch.float64)
    plain = torch.cat([forward(image[None]) for image in images])
    confidence = [float(row.softmax(0).max()) for row in plain]
    chosen = sorted(range(40), key=lambda i: confidence[i])[:10]
    expected = torch.stack([six_view_logits(forward, images[i:i + 1])[0] if i in chosen else plain[i]
                            for i in range(40)])
    view = confidence_selected(six_view_logits, 0.25, batch_size=16)
    torch.testing.assert_close(view(forward, images), expected)
    assert tiny().evaluation_views(final=False) is plain_logits


def test_a_run_reports_the_selected_view_accuracy():
    config = tiny()
    train, test = loaders(config, seed=10)
    result = Trainer(config, EAGER, "cpu", torch.float32).run(train, test, seed=0)
    assert result.accuracy == evaluate(result.model, test, confidence_selected(six_view_logits, 0.25, 100))
    assert result.epochs[-1]["val_accuracy"] == evaluate(result.model, test, plain_logits)


def test_muon_rescales_on_every_fourth_step_only():
    """Between rescaling steps the filters' norms move freely; on steps 4, 8, ... (counted from
    1) each is first set to sqrt(rows)."""
    torch.manual_seed(0)
    config = tiny()
    model = config.build_network(EAGER, "cpu", torch.float32)
    optimizers = Optimizers(config.optimizer_groups(model))
    filters = optimizers.groups[-1].params
    seen = []
    for step in range(8):
        optimizers.set_step(step)
        for group in optimizers.groups:
            for p in group.params:
                p.grad = torch.randn_like(p)
        rescaled = optimizers.rescales[-1].item() == 1.0
        optimizers.step()
        seen.append(rescaled)
    assert seen == [False, False, False, True] * 2
    assert len(filters) == 6


@pytest.mark.slow
def test_compiled_runs_never_recompile_across_the_bias_cut_off_epochs_and_runs():
    """--compile: forward + loss + backward and both updates compiled; the whitening-bias
    cut-off (step 2 here), the rescaling steps, the cut last epoch and a second run reuse
    the graphs the warm-up compiled, and the run ends near the eager one."""
    torch._dynamo.reset()
    config = tiny()
    train, test = loaders(config, seed=9)
    trainer = Trainer(config, EAGER, "cpu", torch.float32, compile=True)
    trainer.warm_up(train, test)
    with torch._dynamo.config.patch(error_on_recompile=True):
        first = trainer.run(train, test, seed=0)
        trainer.run(train, test, seed=1)
    alone = Trainer(config, EAGER, "cpu", torch.float32).run(train, test, seed=0)
    assert first.epochs[0]["train_loss"] == pytest.approx(alone.epochs[0]["train_loss"], rel=1e-3)
    assert first.epochs[-1]["train_loss"] == pytest.approx(alone.epochs[-1]["train_loss"], rel=2e-2)


@pytest.mark.slow
def test_the_whitening_bias_stops_at_its_step():
    config = tiny()
    train, test = loaders(config, seed=7)
    trainer = Trainer(config, EAGER, "cpu", torch.float32)
    biases = []
    trainer.run(train, test, seed=0, on_step=lambda done: biases.append(trainer.kept[0].whiten.bias.detach().clone()),
                evaluate_every_epoch=False)
    assert config.whiten_bias_steps == 2
    assert not torch.equal(biases[0], biases[1])
    assert all(torch.equal(biases[1], later) for later in biases[2:])


def test_triton_operations_give_the_eager_logits_gradients_and_statistics():
    """--kernels triton: the whitening's GELU and, in training, each group's (pool ->)
    BatchNorm -> SiLU are our kernels (interpreter; pool_batch_norm_gelu and batch_norm_gelu
    with activation="silu"); in eval mode the SiLU after the running statistics is plain
    PyTorch in both tables. Logits, every gradient and the running statistics agree."""
    torch.manual_seed(8)
    config = tiny()
    eager = config.build_network(EAGER, "cpu", torch.float32)
    triton_ops = make_ops("triton")
    triton = copy.deepcopy(eager)
    triton.ops = triton_ops
    for module in triton.modules():
        if hasattr(module, "norm_activation"):
            module.norm_activation = triton_ops.norm_silu
    assert triton_ops.norm_silu is not EAGER.norm_silu
    images = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    for network in (eager, triton):
        network.train()
        network(images).square().sum().backward()
    for (name, p_triton), p_eager in zip(triton.named_parameters(), eager.parameters()):
        if p_eager.grad is not None:
            torch.testing.assert_close(p_triton.grad, p_eager.grad, rtol=1e-4, atol=1e-4, msg=name)
    for (name, b_triton), b_eager in zip(triton.named_buffers(), eager.buffers()):
        torch.testing.assert_close(b_triton, b_eager, rtol=1e-5, atol=1e-6, msg=name)
    eager.eval(), triton.eval()
    with torch.no_grad():
        torch.testing.assert_close(triton(images), eager(images), rtol=1e-4, atol=1e-4)
