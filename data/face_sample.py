"""The embedded sample of the gan experiment: small drawn "anime faces", no download.

Generated deterministically (numpy + Pillow) the first time the default --train-data-root of
`--experiment=gan` is used, or by hand: `python -m data.face_sample [ROOT]`. Each face has
a hair colour (the class subfolder, as torchvision's ImageFolder expects), a skin tone, big
eyes with a highlight, a mouth and a pastel background, with sizes, positions and colours
varying, so a generator has shapes and colours to learn and a classifier has a label to learn
(benchmarks/gan_quality.py uses it for a Frechet distance).

    ROOT/<hair colour>/<n>.png    64 x 64 RGB
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from data import sample

ROOT = Path(__file__).resolve().parent / "faces_sample"
HAIR = {"black": (40, 35, 45), "blonde": (235, 200, 90), "pink": (240, 120, 170), "blue": (70, 110, 220)}
PER_CLASS = 200
SIZE = 64
SEED = 20180707


def draw(hair, rng, size=SIZE):
    """One face on a `size` x `size` canvas."""

    def jitter(colour, spread):
        return tuple(int(c) for c in np.clip(np.asarray(colour) + rng.normal(0, spread, 3), 0, 255))

    background = jitter((215, 225, 240), 25)
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    s = size / 64  # the drawing is designed on 64 px
    cx, cy = 32 * s + rng.normal(0, 2.5) * s, 36 * s + rng.normal(0, 2.5) * s
    rx, ry = rng.uniform(15, 19) * s, rng.uniform(17, 21) * s
    hair_colour, skin = jitter(HAIR[hair], 18), jitter((250, 220, 195), 10)
    pen.ellipse([cx - rx - 5 * s, cy - ry - 7 * s, cx + rx + 5 * s, cy + ry * 0.9], fill=hair_colour)  # hair behind
    pen.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    fringe = cy - ry * rng.uniform(0.2, 0.45)
    pen.chord([cx - rx - 2 * s, cy - ry - 8 * s, cx + rx + 2 * s, fringe + 6 * s], 180, 360, fill=hair_colour)  # bangs
    eye_colour = jitter(rng.choice([(60, 120, 200), (120, 60, 40), (70, 160, 90), (150, 60, 160)]), 15)
    eye_y, eye_dx = cy + rng.uniform(0, 4) * s, rx * rng.uniform(0.38, 0.5)
    eye_w, eye_h = rng.uniform(3.5, 5) * s, rng.uniform(4.5, 6.5) * s
    for side in (-1, 1):
        ex = cx + side * eye_dx
        pen.ellipse([ex - eye_w, eye_y - eye_h, ex + eye_w, eye_y + eye_h], fill=(255, 255, 255))
        pen.ellipse([ex - eye_w * 0.75, eye_y - eye_h * 0.8, ex + eye_w * 0.75, eye_y + eye_h], fill=eye_colour)
        pen.ellipse([ex - eye_w * 0.5, eye_y - eye_h * 0.6, ex - eye_w * 0.05, eye_y - eye_h * 0.1], fill=(255, 255, 255))
    mouth_y = cy + ry * rng.uniform(0.5, 0.65)
    pen.arc([cx - 3 * s, mouth_y - 2 * s, cx + 3 * s, mouth_y + 2 * s], 20, 160, fill=(180, 70, 80), width=max(1, int(s)))
    return image


def generate(root=ROOT, per_class=PER_CLASS):
    """Write the sample under `root`; idempotent, bit-identical each time."""
    root = Path(root)
    rng = np.random.default_rng(SEED)
    for index in range(per_class):
        for hair in HAIR:
            folder = root / hair
            folder.mkdir(parents=True, exist_ok=True)
            draw(hair, rng).save(folder / f"{index}.png")

    sample.mark_complete(root, "data/face_sample.py")
    return root


def ensure(root=ROOT):
    """Generate the sample unless a complete one is already there."""
    return sample.ensure(root, make=generate, what="the gan's embedded face sample")


if __name__ == "__main__":
    print(generate(sys.argv[1] if len(sys.argv) > 1 else ROOT))
