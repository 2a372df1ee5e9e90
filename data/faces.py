"""A folder of images for the gan experiment (registered as `faces`), e.g. the book's anime
faces: `data/faces/*.jpg` (flat) or `data/faces/<any class>/*.jpg` (torchvision's ImageFolder
layout, one level of subfolders). Class labels are not used by the GAN; they are kept so that
benchmarks can use them.

Every image is resized (short side) to --image-size, centre-cropped and scaled to [-1, 1],
the range of the generator's Tanh. There is no random augmentation, so an item depends on its
index alone and any --num-workers gives the same bits.
"""
import logging
from pathlib import Path

from data import face_sample, image_cache
from data.base import Dataset
from data.dogcat import check_folder
from data.readable import load_rgb, split_readable
from utils.core.errors import UserError
from utils.core.registry import DATASETS

log = logging.getLogger(__name__)
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
LAYOUT = "image files (.jpg, .png, ...), directly or in subfolders"


def list_images(root):
    """[(path, class index)] sorted: files in `root` (class 0) and in its subfolders (one class each)."""
    root = Path(root)
    check_folder(root, LAYOUT)
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = []
    for label, folder in enumerate(f for f in folders if any(_is_image(p) for p in f.iterdir())):
        items += [(path, label) for path in sorted(folder.iterdir()) if _is_image(path)]
    if not items:
        raise UserError(f"no images in {str(root)!r}: expected {LAYOUT}")
    return items


def _is_image(path):
    return path.is_file() and path.suffix.lower() in EXTENSIONS and not path.name.startswith(".")


def to_gan_tensor(image, size):
    """Resize the short side to `size`, centre-crop `size` x `size`, scale to [-1, 1]."""
    # Imported here: torchvision's import pulls in torch._dynamo (about 1.5 s), which no
    # other command (classify's train / val / test included) needs at all.
    from torchvision.transforms import functional as F

    image = F.center_crop(F.resize(image, size, antialias=True), [size, size])
    return F.normalize(F.to_tensor(image), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def cached_gan_tensor(pixels, size):
    """to_gan_tensor of a cached image (uint8 (H, W, 3), short side `size` already): the
    centre crop (as torchvision places it) scaled to [-1, 1]."""
    height, width = pixels.shape[:2]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    crop = pixels[top:top + size, left:left + size].permute(2, 0, 1).float().div(255)
    return crop.sub(0.5).div(0.5)


class Faces(Dataset):
    """Items: (image tensor in [-1, 1], class index of its subfolder)."""

    name = "faces"

    def __init__(self, items, image_size, skipped=(), cache=None):
        self.items, self.image_size = items, image_size
        self.cache = cache  # data/image_cache.py: the decoded images (short side --image-size), or None
        self.skipped = list(skipped)  # [(path, reason)] left out by --skip-bad-images

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index = key[1] if isinstance(key, tuple) else key  # (epoch, index) from EpochSampler
        path, label = self.items[index]
        if self.cache is not None:
            return cached_gan_tensor(self.cache.pixels(path), self.image_size), label
        return to_gan_tensor(load_rgb(path), self.image_size), label

    def denormalize(self, batch):
        """Images in [-1, 1] (the generator's Tanh range) back in [0, 1]."""
        return (batch.float() + 1) / 2


@DATASETS.register("faces")
def faces(cfg, split_name):
    """All images of --train-data-root (the GAN has no validation or test split)."""
    root = Path(cfg.train_data_root)
    if root.resolve() == face_sample.ROOT:
        face_sample.ensure(root)
    if split_name != "train":
        raise UserError(f"dataset faces has only a train split (asked for {split_name!r})")
    items, skipped = list_images(root), []
    if cfg.skip_bad_images:
        items, skipped = split_readable(items, cfg.num_workers)
        if not items:
            raise UserError(f"no readable images in {str(root)!r}: all {len(skipped)} were skipped")
    return Faces(items, cfg.image_size, skipped, cache=image_cache.attach(cfg, items, cfg.image_size, kind="gan"))
