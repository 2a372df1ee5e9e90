"""The embedded poetry sample: generated five-character quatrains, no download.

Written the first time the poetry experiment's default `--train-data-root` is used (or by
hand: `python -m data.poetry_sample [ROOT]`), bit-identical each time. It is not poetry: each
"poem" is four lines of five characters, the characters drawn by a fixed random Markov chain
(each character has four likely successors) and the second and fourth lines ending in a
character of one rhyme group, with "，" and "。" where a quatrain has them. That structure is
what a character model has to learn: its loss falls far below the corpus's unigram entropy
(the closing note of the poetry experiment has the numbers). For real poems, point
`--train-data-root` at the book's tang.npz or any UTF-8 text file.
"""
import sys
from pathlib import Path

import numpy as np

from data.sample import ensure as ensure_sample
from data.sample import mark_complete

ROOT = Path(__file__).resolve().parent / "poetry_sample"
FILE = "poems.txt"
POEMS = 2000
SEED = 20181009
# Common characters of classical poems, and four rhyme groups for the line ends.
POOL = ("春风花月山水云天江湖秋雨夜雪日星烟柳草木鸟鱼舟城门窗灯酒梦心人客家路桥林松竹梅兰石泉溪海波"
        "寒暖白青红绿深远高低孤独空静闲归来去飞落开看听望思见问生入出回千万一半重古今新旧南北东西")
RHYMES = ("光霜乡长香阳黄江", "烟前年眠边间船弦", "楼流秋舟愁头游州", "明情声城平清行星")


def chain(rng):
    """{character: (four successors, their probabilities)}: the fixed Markov chain."""
    weights = np.array([0.5, 0.25, 0.15, 0.1])
    return {char: (rng.choice(list(POOL), size=4, replace=False), weights) for char in POOL}


def poem(rng, successors):
    """One quatrain: four lines of five characters, lines 2 and 4 rhyming."""
    rhyme = RHYMES[int(rng.integers(len(RHYMES)))]
    lines = []
    for number in range(4):
        chars = [POOL[int(rng.integers(len(POOL)))]]
        while len(chars) < 5:
            options, weights = successors[chars[-1]]
            chars.append(str(rng.choice(options, p=weights)))
        if number % 2:
            chars[-1] = rhyme[int(rng.integers(len(rhyme)))]
        lines.append("".join(chars) + ("。" if number % 2 else "，"))
    return "".join(lines)


def generate(root=ROOT, count=POEMS):
    """Write `count` poems, one per line, to ROOT/poems.txt; returns the root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    successors = chain(rng)
    (root / FILE).write_text("\n".join(poem(rng, successors) for _ in range(count)) + "\n", encoding="utf-8")
    mark_complete(root, "data/poetry_sample.py")
    return root


def ensure(root=ROOT):
    """The sample's folder, generated unless a complete one is there."""
    return ensure_sample(root, make=generate, what="the poetry sample")


if __name__ == "__main__":
    print(generate(sys.argv[1] if len(sys.argv) > 1 else ROOT))
