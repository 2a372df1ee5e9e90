"""Image transforms whose randomness comes from a passed numpy Generator, not global state.

Train: random resized crop (area share --crop-scale..1, default 0.08, aspect 3/4-4/3, the
Inception/torchvision recipe) and a horizontal flip with probability --hflip (default 0.5);
`Augment` holds a run's settings (`augmentation_of`), and --augment=false trains on the
eval transform. Eval: resize the short side to size/0.875 and centre-crop `size`
(the standard 256 -> 224 ratio).

Both give uint8 (3, size, size) tensors: the crop's box is resized straight from the stored
image in one antialiased (bilinear) pass, and a JPEG whose box spans at least twice the
output is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's draft mode), which
skips most of the decoding. Batches of them are channels_last from the start (`collate`). Normalisation (float, minus mean, over std) happens once per
batch on the run's device (utils/engine/precision.py): workers hand over 4x fewer bytes and do no
float work. benchmarks/pipeline.py measures this against the book's PIL pipeline.
"""
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from data.readable import open_image

MEAN = (0.485, 0.456, 0.406)  # ImageNet's, which the book's Normalize uses
STD = (0.229, 0.224, 0.225)
EVAL_RATIO = 0.875  # eval: the centre crop is 87.5 % of the short side (224 of 256)


@dataclasses.dataclass(frozen=True)
class Augment:
    """A run's training augmentation: flip probability, the random resized crop's smallest
    area share (image files) and the pad-and-crop padding (array data sets)."""
    hflip: float = 0.5
    crop_scale: float = 0.08
    crop_padding: int = 0


AUGMENT_OPTIONS = ("hflip", "crop_scale", "crop_padding")


def augmentation_of(cfg, defaults):
    """The training augmentation of a run on a data set whose own settings are `defaults`
    ({option: value}, its `augmentation`): those, with the run's --hflip / --crop-scale /
    --crop-padding where given; None with --augment=false. A run of an experiment without
    these options (the gan) gets the data set's."""
    if not getattr(cfg, "augment", True):
        return None
    given = {name: getattr(cfg, name, None) for name in defaults}
    return Augment(**{name: default if given[name] is None else given[name] for name, default in defaults.items()})


def denormalize(batch, mean=MEAN, std=STD):
    """Images back in [0, 1] for display: a uint8 batch divided by 255, a float batch
    un-normalised by per-channel `mean` and `std` (default: ImageNet's)."""
    if batch.dtype == torch.uint8:
        return batch.float() / 255
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


def train_image(path, size, rng, augment=Augment()):
    """uint8 (3, size, size): a random resized crop of the image at `path` (an area share of
    augment.crop_scale..1), mirrored with probability augment.hflip; all randomness from `rng`."""
    with open_image(path) as image:
        top, left, h, w = crop_box(*image.size, rng, scale=(augment.crop_scale, 1.0))
        crop = resized_box(image, (left, top, left + w, top + h), size)
    return crop.flip(-1) if augment.hflip and rng.random() < augment.hflip else crop


def eval_image(path, size):
    """uint8 (3, size, size): the image at `path` resized to a short side of size / 0.875,
    centre-cropped to `size` (one resize of the centre box)."""
    with open_image(path) as image:
        return centre_crop(image, size)


def centre_crop(image, size):
    """eval_image of an opened PIL image."""
    return resized_box(image, _centre_box(*image.size, size), size)


def _centre_box(width, height, size):
    side = size * min(width, height) / round(size / EVAL_RATIO)  # the crop's side in stored pixels
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def train_pixels(pixels, size, rng, augment=Augment()):
    """train_image of decoded pixels (a uint8 (H, W, 3) tensor: an image of the decoded-image
    cache, data/image_cache.py), drawing from `rng` exactly as train_image does."""
    height, width = pixels.shape[:2]
    top, left, h, w = crop_box(width, height, rng, scale=(augment.crop_scale, 1.0))
    crop = resize_region(pixels, (left, top, left + w, top + h), size)
    return crop.flip(-1) if augment.hflip and rng.random() < augment.hflip else crop


def eval_pixels(pixels, size):
    """eval_image of decoded pixels (a uint8 (H, W, 3) tensor)."""
    height, width = pixels.shape[:2]
    return resize_region(pixels, _centre_box(width, height, size), size)


def model_input(dataset, image_size):
    """How an image from outside the data (predict(), a caller of an exported model) becomes
    the input of a model trained on data set `dataset` at `image_size`: {"channels",
    "image_size", "mean", "std", "resize", "crop_ratio"}, from the registered entry's
    attributes (data/base.py), ImageFiles' where it has none."""
    from utils.core.registry import DATASETS

    entry = DATASETS.get(dataset)
    return {"channels": getattr(entry, "channels", 3), "image_size": image_size,
            "mean": list(getattr(entry, "mean", MEAN)), "std": list(getattr(entry, "std", STD)),
            "resize": getattr(entry, "resize", "centre-crop"), "crop_ratio": EVAL_RATIO}


def fit_image(image, spec):
    """uint8 (C, size, size) of an opened PIL image, as model_input's `spec` says: resize
    "centre-crop" is exactly `test`'s eval transform of image files; "whole" scales the
    whole image to size x size (antialiased bilinear), as array data sets hold theirs."""
    size = spec["image_size"]
    if spec["resize"] == "centre-crop" and spec["channels"] == 3:
        return centre_crop(image, size)
    pixels = torch.from_numpy(np.array(image.convert("L" if spec["channels"] == 1 else "RGB")))
    pixels = (pixels[..., None] if pixels.dim() == 2 else pixels).permute(2, 0, 1)[None]
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return pixels[0]


def resized_box(image, box, size):
    """`box` (left, top, right, bottom in the stored image's pixels) of an opened, not yet
    decoded PIL image, resized to a uint8 (3, size, size) RGB tensor whose storage is
    (size, size, 3), as the pixels come (see `collate`).

    A JPEG is decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) at which the box still
    spans `size` pixels each way, so the downscale that follows loses nothing it would have
    kept. The box is resized with torch's antialiased bilinear kernel for uint8 pixels in
    that layout: the same filter as Pillow's BILINEAR (within 3 levels of 255), in a third
    of Pillow's time (benchmarks/pipeline.py)."""
    width, height = image.size
    shortest = min(box[2] - box[0], box[3] - box[1])
    scale = 1
    while scale < 8 and shortest >= 2 * scale * size:
        scale *= 2
    if scale > 1:
        image.draft("RGB", (width // scale, height // scale))  # a no-op for other formats
    x_scale, y_scale = image.width / width, image.height / height
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = torch.from_numpy(np.array(image))  # (H, W, 3)
    return resize_region(pixels, (box[0] * x_scale, box[1] * y_scale, box[2] * x_scale, box[3] * y_scale), size)


def resize_region(pixels, box, size):
    """`box` (left, top, right, bottom, rounded to whole pixels) of a uint8 (H, W, 3) tensor,
    resized to uint8 (3, size, size) stored (size, size, 3): see resized_box."""
    height, width = pixels.shape[:2]
    left, top = min(round(box[0]), width - 1), min(round(box[1]), height - 1)
    right, bottom = max(left + 1, round(box[2])), max(top + 1, round(box[3]))
    crop = pixels[top:bottom, left:right].permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def short_side_pixels(image, side, upscale=False):
    """An opened PIL image decoded and resized (antialiased bilinear, as resized_box) so that
    its short side is `side`, aspect kept: a uint8 (H, W, 3) tensor. What the decoded-image
    cache stores (data/image_cache.py). A smaller image is kept as it is unless `upscale`."""
    width, height = image.size
    factor = side / min(width, height)
    target = (width, height) if factor >= 1 and not upscale else \
        (max(1, round(width * factor)), max(1, round(height * factor)))
    scale = 1
    while scale < 8 and min(width, height) >= 2 * scale * side:
        scale *= 2
    if scale > 1:
        image.draft("RGB", (width // scale, height // scale))
    if image.mode != "RGB":
        image = image.convert("RGB")
    pixels = torch.from_numpy(np.array(image))
    if tuple(pixels.shape[:2]) == (target[1], target[0]):
        return pixels.contiguous()
    planes = pixels.permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    resized = F.interpolate(planes, size=(target[1], target[0]), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].permute(1, 2, 0).contiguous()


def collate(items):
    """The DataLoader's default_collate, except that uint8 images whose storage is
    (H, W, C) (as `resized_box` makes them) are stacked as (N, H, W, C) and handed on as an
    (N, C, H, W) view: a channels_last batch without a transposing copy."""
    from torch.utils.data import default_collate

    first = items[0]
    if isinstance(first, (tuple, list)) and torch.is_tensor(first[0]) and first[0].dtype == torch.uint8 and first[0].dim() == 3:
        images = torch.stack([item[0].permute(1, 2, 0) for item in items]).permute(0, 3, 1, 2)
        if len(first) == 2 and isinstance(first[1], int):  # (image, label or id): the common case, directly
            return [images, torch.tensor([item[1] for item in items])]
        return [images, *default_collate([tuple(item[1:]) for item in items])]
    return default_collate(items)
