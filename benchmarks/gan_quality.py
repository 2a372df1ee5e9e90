"""How good are a trained generator's images? A Frechet distance, no download.

    .venv/bin/python main.py train --experiment=gan --env=gan-demo        # or any gan run
    .venv/bin/python benchmarks/gan_quality.py --env=gan-demo [--samples 800]

FID (Heusel et al. 2017) compares the mean and covariance of image features; it normally uses
Inception, which would be a download. Here the features are the 84-d penultimate layer of a
small classifier (the registry's LeNet) trained, in this script, to tell the classes of the
run's own real images apart (the hair colours of the embedded sample, or any class
subfolders). It prints the distance to held-out real images of: the other real images (the
floor), the trained generator, and an untrained generator of the same architecture and seed,
and the ratio untrained / trained. Lower is better; numbers are comparable only between runs
of this script with the same data, size and --samples.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from configs import load_config  # noqa: E402
from data.faces import Faces, list_images  # noqa: E402
from experiments.gan import build_nets  # noqa: E402
from utils.engine import checkpoint  # noqa: E402
from utils.core.registry import MODELS  # noqa: E402


def frechet_distance(a, b):
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (N x D)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # Tr((S_a S_b)^(1/2)) = Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), whose argument is symmetric PSD.
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle)


def train_classifier(images, labels, classes, epochs, seed):
    """LeNet on the real images; returns (model, its accuracy on the last 20% held out)."""
    torch.manual_seed(seed)
    order = torch.randperm(len(images))
    split = int(0.8 * len(images))
    train, held_out = order[:split], order[split:]
    model = MODELS.build("LeNet", num_classes=classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        model.train()
        for batch in train[torch.randperm(len(train))].split(64):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[held_out]).argmax(1) == labels[held_out]).float().mean().item()
    return model, accuracy


@torch.no_grad()
def features(classifier, images):
    """The classifier's 84-d penultimate activations."""
    head = classifier.classifier[:5]  # Linear, ReLU, Dropout (off in eval), Linear, ReLU
    return torch.cat([head(classifier.features(chunk).flatten(1)) for chunk in images.split(256)])


@torch.no_grad()
def generate(netg, count, nz, seed):
    netg.eval()
    noise = torch.randn(count, nz, 1, 1, generator=torch.Generator().manual_seed(seed))
    return torch.cat([netg(chunk) for chunk in noise.split(256)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="a gan run under --checkpoint-dir")
    parser.add_argument("--checkpoint-dir", default=str(ROOT / "checkpoints"))
    parser.add_argument("--samples", type=int, default=800, help="generated images per generator")
    parser.add_argument("--classifier-epochs", type=int, default=15)
    args = parser.parse_args()

    path = checkpoint.find_for_inference(Path(args.checkpoint_dir) / args.env)
    state = checkpoint.load_checkpoint(path)
    cfg = load_config({**state["config"], "config": None, "device": "cpu"})
    items = list_images(cfg.train_data_root)
    classes = len({label for _, label in items})
    if classes < 2:
        sys.exit(f"{cfg.train_data_root} has no class subfolders: the feature classifier needs labels")
    dataset = Faces(items, cfg.image_size)
    real = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.tensor([label for _, label in items])
    classifier, accuracy = train_classifier(real, labels, classes, args.classifier_epochs, cfg.seed)

    torch.manual_seed(cfg.seed)
    trained, untrained = build_nets(cfg, torch.device("cpu"))[0], build_nets(cfg, torch.device("cpu"))[0]
    checkpoint.load_weights(trained, state["netg"], source=str(path))
    halves = torch.randperm(len(real), generator=torch.Generator().manual_seed(1)).chunk(2)
    reference = features(classifier, real[halves[0]])
    results = {
        "real images (other half), the floor": frechet_distance(reference, features(classifier, real[halves[1]])),
        f"trained generator ({path.name}, epoch {state['epoch']})":
            frechet_distance(reference, features(classifier, generate(trained, args.samples, cfg.nz, 1))),
        "untrained generator (same architecture)":
            frechet_distance(reference, features(classifier, generate(untrained, args.samples, cfg.nz, 1))),
    }
    print(f"run {args.env}: {len(real)} real images, {cfg.image_size} px, {classes} classes; "
          f"feature classifier held-out accuracy {accuracy:.3f}")
    print(f"Frechet distance to {len(halves[0])} real images in classifier features (lower is better):")
    for name, distance in results.items():
        print(f"  {name:<48} {distance:10.3f}")
    values = list(results.values())
    print(f"untrained / trained: {values[2] / values[1]:.1f}x   trained / real floor: {values[1] / max(values[0], 1e-12):.1f}x")


if __name__ == "__main__":
    main()
