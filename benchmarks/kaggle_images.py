"""Kaggle-size, photo-like JPEGs for the benchmarks: smooth colour fields with fine grain,
400-500 x 300-375 px at quality 85, about 35 KB each, the size and weight of the Dogs vs.
Cats images (whose decoding cost depends on both). Files are cat.<n>.jpg / dog.<n>.jpg in
<folder>/train (and <n>.jpg in <folder>/test when asked), generated from `seed` alone.
"""
import numpy as np
from PIL import Image, ImageFilter


def photo(rng):
    width, height = int(rng.integers(400, 501)), int(rng.integers(300, 376))
    coarse = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC)).astype(np.int16)
    grain = rng.normal(0, 12, (height, width, 1)).astype(np.int16)
    return Image.fromarray(np.clip(pixels + grain, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.7))


def make(folder, train, test=0, seed=0):
    """`train` labelled images in folder/train and `test` numbered ones in folder/test."""
    rng = np.random.default_rng(seed)
    (folder / "train").mkdir(parents=True, exist_ok=True)
    for index in range(train):
        kind = "dog" if index % 2 else "cat"
        photo(rng).save(folder / "train" / f"{kind}.{index // 2}.jpg", quality=85)
    if test:
        (folder / "test").mkdir(parents=True, exist_ok=True)
        for index in range(1, test + 1):
            photo(rng).save(folder / "test" / f"{index}.jpg", quality=85)
    return folder
