"""What fingerprinting the data (utils/engine/data_fingerprint.py) costs on a Kaggle-size
folder: 25,000 photo-like JPEGs of Dogs vs. Cats' size and weight (benchmarks/kaggle_images.py).

    .venv/bin/python benchmarks/data_hash.py [--images 25000] [--folder /tmp/runner-kaggle-25k]

Generates the folder once (kept for the next run: about 0.9 GB), then:
  first run:  the fingerprint with an empty hash cache (every file read and hashed; the
              files are in the page cache after generating them, as after a first epoch);
  next runs:  the fingerprint again, every file's hash from the cache (size and mtime
              unchanged): what every later run and every resume pays;
  beside training: images decoded and cropped as a train step's loader does, alone and
              while a Hasher thread fingerprints the folder with an empty cache (the first
              minutes of a first run), side by side.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import kaggle_images  # noqa: E402
from data import transforms  # noqa: E402
from data.sampling import augmentation_rng  # noqa: E402
from utils.engine import data_fingerprint  # noqa: E402


def decode(paths):
    started = time.perf_counter()
    augment = transforms.Augment(hflip=0.5, crop_scale=0.08)
    for index, path in enumerate(paths):
        transforms.train_image(str(path), 224, augmentation_rng(0, (0, index)), augment)
    return len(paths) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=25000)
    parser.add_argument("--folder", default=os.path.join(tempfile.gettempdir(), "runner-kaggle-25k"))
    parser.add_argument("--decode", type=int, default=400, help="images decoded for the side-by-side")
    args = parser.parse_args()
    folder = Path(args.folder)
    train = folder / "train"
    if not train.is_dir() or len(os.listdir(train)) != args.images:
        started = time.perf_counter()
        kaggle_images.make(folder, args.images)
        print(f"generated {args.images} JPEGs in {time.perf_counter() - started:.0f} s")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RUNNER_CACHE_DIR"] = cache
        started = time.perf_counter()
        entries = data_fingerprint.listing(train)
        listed = time.perf_counter() - started
        started = time.perf_counter()
        first, _ = data_fingerprint.fingerprint(train)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        again, _ = data_fingerprint.fingerprint(train)
        warm = time.perf_counter() - started
        assert again == first
    print(f"{first['files']} files, {first['bytes'] / 1e6:.0f} MB in {train}")
    print(f"  listing (walk + stat):           {listed:.2f} s")
    print(f"  first run (every file hashed):   {cold:.2f} s ({first['bytes'] / 1e6 / cold:.0f} MB/s)")
    print(f"  next runs (hashes from cache):   {warm:.2f} s")
    paths = [path for _, _, _, path in entries[:args.decode]]
    decode(paths[:20])  # warm up
    alone = decode(paths)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RUNNER_CACHE_DIR"] = cache
        hasher = data_fingerprint.Hasher({"train": train})
        beside = decode(paths)
        busy = hasher.result() is None
        hasher.result(wait=True)
    print(f"  decoding for training: {alone:.0f} img/s alone, {beside:.0f} img/s while the data is hashed "
          f"({beside / alone:.2f}x){'' if busy else ' (the hash ended first)'}")


if __name__ == "__main__":
    main()
