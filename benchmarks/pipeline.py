"""The image pipeline: decode + augment images/s of one worker on Kaggle-size JPEGs, the
runner's against the book's torchvision PIL pipeline, side by side in one run.

    .venv/bin/python benchmarks/pipeline.py [--images 400] [--size 224] [--repeats 3]

book train: Image.open, Resize(256), RandomResizedCrop(224), RandomHorizontalFlip,
            ToTensor, Normalize (the book's chapter 6 train transforms)
book eval:  Image.open, Resize(224), CenterCrop(224), ToTensor, Normalize (its val/test)
runner:     data.image_files.ImageFiles items (data/transforms.py: one box resize from the stored
            image, JPEG DCT-scale decoding when the box allows it, uint8 out), plus the
            per-batch normalisation the run does on its device (here: the CPU), per image.

One thread, one process: what one DataLoader worker does. Each pipeline runs --repeats
times interleaved with the others; the best pass of each is compared. Then checks that a
DataLoader over the runner's train set gives the same bits with 0 and 2 workers.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kaggle_images  # noqa: E402
from data.dogcat import list_train  # noqa: E402
from data.image_files import ImageFiles  # noqa: E402
from data.transforms import MEAN, STD, collate  # noqa: E402
from utils.engine.precision import Precision  # noqa: E402


def book_pipelines(size):
    from PIL import Image
    from torchvision import transforms as T

    normalize = T.Normalize(mean=list(MEAN), std=list(STD))
    train = T.Compose([T.Resize(256), T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    evaluation = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), normalize])
    return (lambda path, index: train(Image.open(path))), (lambda path, index: evaluation(Image.open(path)))


def runner_pipelines(items, size):
    train, evaluation = ImageFiles(items, size, augment=True, seed=0), ImageFiles(items, size, augment=False, seed=0)
    precision = Precision(SimpleNamespace(amp=False, channels_last=True), torch.device("cpu"), train)
    batch = collate([evaluation[index] for index in range(32)])[0]  # as the run's DataLoader stacks them

    def normalise_share():  # the run normalises whole batches on its device: 1/32 of one per image
        precision.to_device(batch)

    state = {"n": 0}

    def with_normalisation(dataset):
        def load(path, index):
            image = dataset[(0, index)][0]
            state["n"] += 1
            if state["n"] % 32 == 0:
                normalise_share()
            return image
        return load

    return with_normalisation(train), with_normalisation(evaluation)


def images_per_second(pipeline, paths):
    started = time.perf_counter()
    for index, path in enumerate(paths):
        pipeline(path, index)
    return len(paths) / (time.perf_counter() - started)


def same_bits_for_any_worker_count(items, size):
    dataset = ImageFiles(items[:64], size, augment=True, seed=0)
    keys = [(0, index) for index in range(len(dataset))]
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(dataset, batch_size=16, sampler=keys, num_workers=workers, collate_fn=collate)
        batches.append(torch.cat([images for images, _ in loader]))
    return torch.equal(*batches)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        kaggle_images.make(Path(folder), args.images)
        items = list_train(Path(folder) / "train")
        paths = [path for path, _ in items]
        book_train, book_eval = book_pipelines(args.size)
        runner_train, runner_eval = runner_pipelines(items, args.size)
        pipelines = {"book train": book_train, "runner train": runner_train, "book eval": book_eval, "runner eval": runner_eval}
        best = {name: 0.0 for name in pipelines}
        for _ in range(args.repeats):
            for name, pipeline in pipelines.items():
                best[name] = max(best[name], images_per_second(pipeline, paths))
        same = same_bits_for_any_worker_count(items, args.size)
    print(f"{args.images} Kaggle-size JPEGs, {args.size} px, one worker (1 thread), best of {args.repeats}")
    for name, speed in best.items():
        print(f"  {name:13s} {speed:7.1f} img/s")
    print(f"train: runner / book = {best['runner train'] / best['book train']:.2f}x")
    print(f"eval:  runner / book = {best['runner eval'] / best['book eval']:.2f}x")
    print(f"same bits with 0 and 2 workers: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
