"""What `evaluate` computes (engine.training.evaluation.evaluate, engine.api.evaluate, Trainer.evaluate),
against a reference computed here by hand, with a network that is not mirror-symmetric:
its logits for an image and for the image's mirror differ, so the flip test-time
augmentation changes predictions, and an accuracy that drops it (or applies it when
asked not to) differs from the reference."""
import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.training.data import Cifar10, CifarLoader
from engine.training.evaluation import evaluate, flip_averaged_logits, plain_logits
from engine.training.ops import make_ops
from engine.recipes.seed import Config
from engine.training.train import Trainer

IMAGES = 200
BATCH = 64                     # 200 = 3 full batches and a partial one


class NotMirrorSymmetric(nn.Module):
    """BatchNorm (running statistics set by the test) then one linear map of the whole image."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.linear = nn.Linear(3 * 32 * 32, 10)
        with torch.no_grad():
            self.norm.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
            self.norm.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
            self.norm.bias.copy_(torch.tensor([0.1, 0.0, -0.1]))

    def forward(self, x):
        return self.linear(self.norm(x).flatten(1))


def reference_logits(model, images_uint8, mirrored):
    """float64, by hand: normalise, optionally mirror, BatchNorm with running statistics, linear."""
    x = torch.from_numpy(images_uint8).double().permute(0, 3, 1, 2) / 255
    x = (x - torch.tensor(Config().mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        Config().std, dtype=torch.float64).view(1, 3, 1, 1)
    if mirrored:
        x = x.flip(-1)
    norm = model.norm
    mean, var = norm.running_mean.double().view(1, 3, 1, 1), norm.running_var.double().view(1, 3, 1, 1)
    x = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.double().view(1, 3, 1, 1) + norm.bias.double().view(1, 3, 1, 1)
    return x.flatten(1) @ model.linear.weight.double().T + model.linear.bias.double()


def clear_winner(logits, margin=1e-3):
    """Images whose best logit leads the second by more than `margin` (float32 cannot flip them)."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1] > margin


@pytest.fixture(scope="module")
def case():
    """The model, a test split whose labels are the reference's TTA predictions, and the
    accuracies the reference gives with and without the flip TTA."""
    torch.manual_seed(0)
    model = NotMirrorSymmetric()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3 * IMAGES, 32, 32, 3), dtype=np.uint8)
    plain = reference_logits(model, images, mirrored=False)
    tta = 0.5 * (plain + reference_logits(model, images, mirrored=True))
    keep = (clear_winner(plain) & clear_winner(tta)).nonzero().flatten()[:IMAGES].numpy()
    assert len(keep) == IMAGES
    images, plain, tta = images[keep], plain[keep], tta[keep]
    labels = tta.argmax(1).numpy()
    expected = {True: 1.0, False: float((plain.argmax(1).numpy() == labels).sum()) / IMAGES}
    # The flip changes enough predictions for the two accuracies to tell the settings apart.
    assert expected[False] < 0.9
    data = Cifar10(images, labels, images, labels, "test images")
    return model, data, expected


@pytest.mark.parametrize("tta_flip", [True, False])
def test_evaluate_computes_the_flip_tta_accuracy_by_hand(case, tta_flip):
    model, data, expected = case
    loader = CifarLoader(data.test_images, data.test_labels, Config(test_batch_size=BATCH), False, "cpu",
                         torch.float32)
    model.train()
    assert evaluate(model, loader, flip_averaged_logits if tta_flip else plain_logits) == expected[tta_flip]
    assert model.training                                        # left as it was found
    config = Config(tta_flip=tta_flip, test_batch_size=BATCH)
    model.config = config                                        # what a recipe's network carries
    assert engine.evaluate(model, data, batch_size=BATCH) == expected[tta_flip]
    trainer = Trainer(config, make_ops("eager"), "cpu", torch.float32)
    assert trainer.evaluate(model, loader, config.evaluation_views(final=True)) == expected[tta_flip]
