"""The training loader's augmentation against a reference built here with numpy: every
image of an epoch must be one of the 7 x 7 crops of its original, normalised and
reflect-padded by 3 independently of the loader, either as it is or mirrored left-right,
and about half of them mirrored. (tests/test_data.py checks the pieces: crops against
the offsets random_crop reports, flips against its mask.)"""
import numpy as np
import torch

from engine.recipes.seed import Config
from engine.training.data import CifarLoader, make_synthetic


def reference_windows(images_uint8, pad):
    """Every crop position of every image: (N, 2 pad + 1, 2 pad + 1, 3, 32, 32), float64."""
    x = (images_uint8.astype(np.float64) / 255 - np.array(Config().mean)) / np.array(Config().std)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")      # (N, 38, 38, 3)
    padded = torch.from_numpy(padded).permute(0, 3, 1, 2)                              # (N, 3, 38, 38)
    return padded.unfold(2, 32, 1).unfold(3, 32, 1).permute(0, 2, 3, 1, 4, 5)


def test_every_training_image_is_a_crop_of_its_reflect_padded_original_plain_or_mirrored():
    data = make_synthetic(64, seed=8)
    config = Config(train_images=64, batch_size=32)
    loader = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    windows = reference_windows(data.train_images, config.pad)
    assert windows.shape[1:3] == (7, 7)
    batches = list(loader.epoch(torch.Generator().manual_seed(9)))
    images = torch.cat([images for images, _ in batches]).double()
    sources = loader.last_permutation[:len(images)]
    assert torch.equal(torch.cat([labels for _, labels in batches]), torch.from_numpy(data.train_labels)[sources])
    candidates = windows[sources].reshape(len(images), 49, 3, 32, 32)
    plain_error = (candidates - images[:, None]).abs().amax((2, 3, 4)).amin(1)
    mirror_error = (candidates.flip(-1) - images[:, None]).abs().amax((2, 3, 4)).amin(1)
    unmatched = (torch.minimum(plain_error, mirror_error) >= 1e-5).nonzero().flatten()
    assert len(unmatched) == 0, f"images {sources[unmatched].tolist()} are no crops of their padded originals"
    assert 0.3 < (mirror_error < plain_error).double().mean() < 0.7
