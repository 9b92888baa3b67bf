"""The structure of the network (SPEC "Network"), against float64 references written out
here, for both operation tables (the eager twins and the Triton kernels, which run in the
interpreter on a CPU), in training mode (batch statistics) and in eval mode (running
statistics). Comparing the two tables with each other cannot catch a wrong structure:
both run the same ConvGroup.forward and Network.forward.

    r   = GELU(BN1(maxpool(conv1(x))))                        a group's first branch (all of a short group)
    s   = sigmoid(fc2(GELU(fc1(mean of r over H, W))))        the squeeze-excite gate
    out = GELU(BN3(conv3(GELU(BN2(conv2(r)))) * s)) + r       a full group: the residual branch added to r
    network: GELU(BN(project(whiten(x)))) -> full, short, full group -> max over H, W
             -> linear (no bias) -> x logit_scale
"""
import math

import pytest
import torch
import torch.nn.functional as F

from engine.recipes.seed import Config, ConvGroup
from engine.training.ops import make_ops

CHANNELS_IN, CHANNELS_OUT = 8, 32          # SE hidden size 32 // 16 = 2
# float32 against float64: sums of at most 9 x 32 products (float32 keeps them to about
# 1e-6 of their size here), normalised by batch statistics of about unit size.
TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def batchnorm(x, norm, train):
    """BatchNorm by hand: batch statistics (biased variance) in training, running ones in eval."""
    if train:
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    else:
        mean, var = norm.running_mean.double(), norm.running_var.double()
    scale = norm.weight.double() / torch.sqrt(var + norm.eps)
    return (x - mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + norm.bias.double().view(1, -1, 1, 1)


def conv(x, layer):
    return F.conv2d(x, layer.weight.double(), padding=1)


def first_branch(group, x, train):
    return gelu(batchnorm(F.max_pool2d(conv(x, group.conv1), 2), group.norm1, train))


def reference_group(group, x, train):
    r = first_branch(group, x, train)
    se = group.squeeze_excite
    hidden = gelu(r.mean((2, 3)) @ se.fc1.weight.double().T + se.fc1.bias.double())
    gate = torch.sigmoid(hidden @ se.fc2.weight.double().T + se.fc2.bias.double())
    y = gelu(batchnorm(conv(r, group.conv2), group.norm2, train))
    y = conv(y, group.conv3) * gate[:, :, None, None]
    return gelu(batchnorm(y, group.norm3, train)) + r


def reference_network(model, x, train):
    x = F.conv2d(F.conv2d(x, model.whiten.weight.double()), model.project.weight.double())
    x = gelu(batchnorm(x, model.project_norm, train))
    x = reference_group(model.group1, x, train)
    x = first_branch(model.group2, x, train)
    x = reference_group(model.group3, x, train)
    return x.amax((2, 3)) @ model.classifier.weight.double().T * model.config.logit_scale


def randomise_batchnorms(model):
    """Non-zero BatchNorm biases and running statistics of about unit size."""
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                channels = norm.num_features
                norm.bias.copy_(0.5 * torch.randn(channels))
                norm.running_mean.copy_(0.3 * torch.randn(channels))
                norm.running_var.copy_(0.5 + torch.rand(channels))


def make_group(kind, train):
    """A full group with non-zero BatchNorm biases (and, for eval, running statistics)."""
    group = ConvGroup(CHANNELS_IN, CHANNELS_OUT, True, Config(base_width=8), make_ops(kind))
    randomise_batchnorms(group)
    group.train(train)
    x = torch.randn(4, CHANNELS_IN, 16, 16).contiguous(memory_format=torch.channels_last)
    return group, x


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["eager", "triton"])
def test_with_conv3_zeroed_the_group_returns_its_first_branch_plus_gelu_of_bn3_of_zero(kind, train):
    """conv3 = 0 makes the gated branch 0, so out = r + GELU(BN3(0)): in training BN3 of an
    all-zero batch is its bias (mean 0, variance 0: 0 / sqrt(eps) = 0); in eval it is
    (0 - running mean) / sqrt(running var + eps) + bias."""
    group, x = make_group(kind, train)
    with torch.no_grad():
        group.conv3.weight.zero_()
        out = group(x)
    norm3 = group.norm3
    if train:
        bn3_of_zero = norm3.bias.double()
    else:
        bn3_of_zero = -norm3.running_mean.double() / torch.sqrt(norm3.running_var.double() + norm3.eps) + norm3.bias.double()
    expected = first_branch(group, x.double(), train) + gelu(bn3_of_zero).view(1, -1, 1, 1)
    assert out.shape == expected.shape == (4, CHANNELS_OUT, 8, 8)
    torch.testing.assert_close(out.double(), expected, **TOLERANCE)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["eager", "triton"])
def test_full_group_matches_the_float64_reference(kind, train):
    group, x = make_group(kind, train)
    with torch.no_grad():
        expected = reference_group(group, x.double(), train)
        out = group(x)
    torch.testing.assert_close(out.double(), expected, **TOLERANCE)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", ["eager", "triton"])
def test_network_matches_the_float64_reference(kind, train):
    whitening = torch.randn(12, 3, 2, 2, dtype=torch.float64) * 0.5
    model = Config(base_width=8).build_network(make_ops(kind), "cpu", torch.float32)
    with torch.no_grad():
        model.whiten.weight.copy_(whitening)
    randomise_batchnorms(model)
    model.train(train)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = reference_network(model, x.double(), train)
        logits = model(x)
    assert logits.shape == (4, 10)
    # Logits are scaled by 0.1: the tolerance follows their size.
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
