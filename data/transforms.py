"""Image transforms whose randomness comes from a passed numpy Generator, not global state.

Train: random resized crop (scale 0.08-1, aspect 3/4-4/3, the Inception/torchvision recipe)
and horizontal flip. Eval: resize the short side to size/0.875 and centre-crop `size`
(the standard 256 -> 224 ratio). Both end in ImageNet normalisation.
"""
import math

import torch
from torchvision.transforms import functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def to_tensor(image):
    return F.normalize(F.to_tensor(image), MEAN, STD)


def denormalize(batch, mean=MEAN, std=STD):
    """Undo a normalisation by per-channel `mean` and `std` (default: `to_tensor`'s):
    images back in [0, 1] for display."""
    mean = torch.tensor(mean, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=batch.device).view(1, -1, 1, 1)
    return (batch * std + mean).clamp(0, 1)


def crop_box(width, height, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(top, left, h, w) of a random crop covering `scale` of the area at aspect `ratio`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback: the largest centred crop within the allowed aspect range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(image, size, rng):
    top, left, h, w = crop_box(*image.size, rng)
    image = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if rng.random() < 0.5:
        image = F.hflip(image)
    return to_tensor(image)


def eval_transform(image, size):
    image = F.resize(image, int(round(size / 0.875)), antialias=True)
    return to_tensor(F.center_crop(image, [size, size]))
