"""End to end against the book: `train` and `test` wall time of the runner and of a loop
written the way the book's chapter 6 writes it, on the same images, model and settings.

    .venv/bin/python benchmarks/vs_book.py [--train 448] [--test 160] [--model ResNet34]
        [--batch-size 32] [--workers 2] [--epochs 1] [--rounds 2]

Both sides are separate processes, so imports and start-up count, timed by this script:
  book:   benchmarks/vs_book.py book-train | book-test: a torchvision PIL pipeline (Resize,
          RandomResizedCrop / CenterCrop, flip, ToTensor, Normalize per image), the model in
          the default NCHW layout, Adam, torchnet meters, a debug-file check every
          print_freq steps, validation under no_grad after each epoch, the weights saved each
          epoch; test under no_grad, softmax, a csv of P(dog). The model class is the
          runner's (models/), so both train the same network.
  runner: python main.py train / test with the same options and its defaults; then
          `python main.py export` (timed apart: done once per model) and
          `python main.py test --runtime=onnxruntime` on the exported file.
The sides alternate for --rounds rounds; the best round of each is compared.
Goal on a CPU: train >= 1.15x, test >= 1.5x (runner speed / book speed).
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# -- the book's way --------------------------------------------------------------------------
class BookDogCat:
    """Files of a folder, labels from the name, a 70 / 30 split of a seeded permutation."""

    def __init__(self, root, kind, image_size=224):
        import numpy as np
        from torchvision import transforms as T

        files = sorted(Path(root).iterdir(), key=lambda p: int(p.name.split(".")[-2]))
        if kind != "test":
            files = list(np.random.RandomState(100).permutation(files))
            cut = int(0.7 * len(files))
            files = files[:cut] if kind == "train" else files[cut:]
        self.files, self.kind = files, kind
        normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        if kind == "train":
            self.transform = T.Compose([T.Resize(256), T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(),
                                        T.ToTensor(), normalize])
        else:
            self.transform = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), normalize])

    def __getitem__(self, index):
        from PIL import Image

        path = self.files[index]
        target = int(path.name.split(".")[-2]) if self.kind == "test" else int("dog" in path.name)
        return self.transform(Image.open(path)), target

    def __len__(self):
        return len(self.files)


def book_train(args):
    import torch
    from torchnet import meter

    from utils.core.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(args.model, num_classes=2)
    loader = torch.utils.data.DataLoader(BookDogCat(args.data / "train", "train"), args.batch_size, shuffle=True,
                                         num_workers=args.workers)
    val_loader = torch.utils.data.DataLoader(BookDogCat(args.data / "train", "val"), args.batch_size, shuffle=False,
                                             num_workers=args.workers)
    criterion, lr = torch.nn.CrossEntropyLoss(), 1e-3
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    loss_meter, confusion, previous = meter.AverageValueMeter(), meter.ConfusionMeter(2), 1e100
    for epoch in range(args.epochs):
        loss_meter.reset()
        confusion.reset()
        for step, (images, labels) in enumerate(loader):
            optimizer.zero_grad()
            scores = model(images)
            loss = criterion(scores, labels)
            loss.backward()
            optimizer.step()
            loss_meter.add(loss.item())
            confusion.add(scores.detach(), labels.detach())
            if (step + 1) % 20 == 0 and os.path.exists(args.debug_file):
                raise SystemExit("debug file present")
        torch.save(model.state_dict(), args.out / f"{args.model}_{time.strftime('%m%d_%H%M%S')}.pth")
        model.eval()
        val_confusion = meter.ConfusionMeter(2)
        with torch.no_grad():
            for images, labels in val_loader:
                val_confusion.add(model(images).detach(), labels)
        model.train()
        if loss_meter.value()[0] > previous:
            lr *= 0.5
            for group in optimizer.param_groups:
                group["lr"] = lr
        previous = loss_meter.value()[0]
    torch.save(model.state_dict(), args.out / "book.pth")


def book_test(args):
    import torch

    from utils.core.registry import MODELS

    model = MODELS.build(args.model, num_classes=2)
    model.load_state_dict(torch.load(args.out / "book.pth", weights_only=True))
    model.eval()
    loader = torch.utils.data.DataLoader(BookDogCat(args.data / "test", "test"), args.batch_size, shuffle=False,
                                         num_workers=args.workers)
    results = []
    with torch.no_grad():
        for images, ids in loader:
            probabilities = torch.nn.functional.softmax(model(images), dim=1)[:, 1].tolist()
            results += list(zip(ids.tolist(), probabilities))
    with open(args.out / "book.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label"])
        writer.writerows(results)


# -- the comparison ---------------------------------------------------------------------------
def read_csv(path):
    """{id: P(dog)} of a Kaggle csv, in file order."""
    with open(path, newline="") as handle:
        return {row["id"]: float(row["label"]) for row in csv.DictReader(handle)}


def timed(command):
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, command))}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def compare(args):
    import kaggle_images

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = kaggle_images.make(folder / "data", args.train, args.test)
        common = [f"--model={args.model}", f"--batch-size={args.batch_size}", f"--workers={args.workers}",
                  f"--epochs={args.epochs}", f"--data={data}", f"--out={folder}", f"--debug-file={folder / 'debug'}"]
        runner = [f"--model={args.model}", f"--batch-size={args.batch_size}", f"--num-workers={args.workers}",
                  f"--checkpoint-dir={folder / 'runs'}", f"--debug-file={folder / 'debug'}", "--progress=false"]
        best, differences = {}, []
        for round_ in range(args.rounds):
            times = {
                "book train": timed([sys.executable, __file__, "book-train", *common]),
                "runner train": timed([sys.executable, "main.py", "train", *runner, f"--env=r{round_}",
                                       f"--train-data-root={data / 'train'}", f"--max-epoch={args.epochs}"]),
                "book test": timed([sys.executable, __file__, "book-test", *common]),
                "runner test": timed([sys.executable, "main.py", "test", *runner, f"--env=r{round_}",
                                      f"--test-data-root={data / 'test'}", f"--result-file={folder / 'result.csv'}"]),
                "runner export": timed([sys.executable, "main.py", "export", f"--env=r{round_}",
                                        f"--checkpoint-dir={folder / 'runs'}"]),
                "runner test onnxruntime": timed([sys.executable, "main.py", "test", *runner, f"--env=r{round_}",
                                                  "--runtime=onnxruntime", f"--test-data-root={data / 'test'}",
                                                  f"--result-file={folder / 'result_ort.csv'}"]),
            }
            for name, seconds in times.items():
                best[name] = min(best.get(name, float("inf")), seconds)
            by_torch, by_onnx = (read_csv(folder / name) for name in ("result.csv", "result_ort.csv"))
            if list(by_torch) != list(by_onnx):
                sys.exit("the ONNX Runtime csv has other ids, or another order, than the PyTorch csv")
            differences.append(max(abs(by_torch[key] - by_onnx[key]) for key in by_torch))
            print(f"  round {round_ + 1}: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items()),
                  flush=True)
    print(f"{args.train} train + {args.test} test Kaggle-size JPEGs, {args.model} at 224 px, batch {args.batch_size}, "
          f"{args.workers} workers, {args.epochs} epoch(s); best of {args.rounds}")
    print(f"train: book {best['book train']:.1f} s, runner {best['runner train']:.1f} s, "
          f"runner speed / book = {best['book train'] / best['runner train']:.2f}x")
    print(f"test:  book {best['book test']:.1f} s, runner {best['runner test']:.1f} s, "
          f"runner speed / book = {best['book test'] / best['runner test']:.2f}x")
    print(f"test with ONNX Runtime: runner {best['runner test onnxruntime']:.1f} s, "
          f"runner speed / book = {best['book test'] / best['runner test onnxruntime']:.2f}x "
          f"(export, once per model: {best['runner export']:.1f} s); its csv vs PyTorch's: the same ids in the "
          f"same order, P(dog) within {max(differences):.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="compare", choices=("compare", "book-train", "book-test"))
    parser.add_argument("--train", type=int, default=448)
    parser.add_argument("--test", type=int, default=160)
    parser.add_argument("--model", default="ResNet34")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--debug-file", default="/tmp/debug")
    args = parser.parse_args()
    {"compare": compare, "book-train": book_train, "book-test": book_test}[args.mode](args)


if __name__ == "__main__":
    main()
