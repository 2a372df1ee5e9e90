"""What --skip-bad-images costs at start: the up-front decode of every image, on Kaggle-size
JPEGs, against a full decode, with the same files found bad by both.

    .venv/bin/python benchmarks/image_scan.py [--images 2000] [--workers 2]

Writes N JPEGs of 400-500 x 300-375 px (the Kaggle Dogs vs. Cats sizes) into a temp folder,
breaks 1% of them (zero bytes, truncated, text), then times data.readable.split_readable
(1/8-scale draft decode, --workers threads) and a full-size decode of each file, and prints
both, their ratio and the estimate for the 25,000 Kaggle train images.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data import readable  # noqa: E402


def make(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = int(rng.integers(400, 501)), int(rng.integers(300, 376))
        base = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        pixels = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
        noisy = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        path = folder / f"cat.{index}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(path)
    bad = set()
    for n, path in enumerate(paths[:: max(1, count // (count // 100 or 1))][: max(3, count // 100)]):
        kind = n % 3
        if kind == 0:
            path.write_bytes(b"")
        elif kind == 1:
            path.write_bytes(path.read_bytes()[:2000])
        else:
            path.write_text("not an image")
        bad.add(path)
    return paths, bad


def full_decode(path):
    try:
        with Image.open(path) as image:
            image.load()
    except OSError as error:
        return str(error)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths, bad = make(Path(folder), args.images)
        items = [(path, 0) for path in paths]
        for path in paths:  # warm the page cache for both
            path.read_bytes()
        started = time.perf_counter()
        _, found = readable.split_readable(items, args.workers)
        scan = time.perf_counter() - started
        started = time.perf_counter()
        full = [path for path in paths if full_decode(path) is not None]
        decode = time.perf_counter() - started
    assert {path for path, _ in found} == bad == set(full), "the draft scan must find exactly the broken files"
    print(f"{args.images} Kaggle-size JPEGs, {len(bad)} broken (all found by both)")
    print(f"--skip-bad-images scan ({args.workers} threads, 1/8 draft): {scan:.2f} s, {1000 * scan / args.images:.2f} ms/image, "
          f"25,000 images ~ {25000 * scan / args.images:.0f} s")
    print(f"full decode (1 thread):                   {decode:.2f} s, {1000 * decode / args.images:.2f} ms/image")
    print(f"ratio full / scan: {decode / scan:.1f}x")


if __name__ == "__main__":
    main()
