"""The structure of a full ConvGroup (SPEC "Network"), against float64 references written
out here, for both operation tables (the eager twins and the Triton kernels, which run in
the interpreter on a CPU), in training mode (batch statistics) and in eval mode (running
statistics). Comparing the two tables with each other cannot catch a wrong structure:
both run the same ConvGroup.forward.

    r   = GELU(BN1(maxpool(conv1(x))))                        the first branch
    s   = sigmoid(fc2(GELU(fc1(mean of r over H, W))))        the squeeze-excite gate
    out = GELU(BN3(conv3(GELU(BN2(conv2(r)))) * s)) + r       the residual branch, added to r
"""
import math

import pytest
import torch
import torch.nn.functional as F

from engine.config import Config
from engine.model import ConvGroup
from engine.ops import make_ops

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


def make_group(kind, train):
    """A full group with non-zero BatchNorm biases (and, for eval, running statistics)."""
    group = ConvGroup(CHANNELS_IN, CHANNELS_OUT, True, Config(base_width=8), make_ops(kind))
    with torch.no_grad():
        for norm in (group.norm1, group.norm2, group.norm3):
            norm.bias.copy_(0.5 * torch.randn(CHANNELS_OUT))
            norm.running_mean.copy_(0.3 * torch.randn(CHANNELS_OUT))
            norm.running_var.copy_(0.5 + torch.rand(CHANNELS_OUT))
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
