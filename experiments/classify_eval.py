"""Classify's evaluation: log-probabilities of a batch (with test-time augmentation) and the
metrics of a labelled split (loss, accuracy, top-5, Kaggle log loss, confusion counts)."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from utils.core.registry import METERS
from utils.engine.experiment import gather, reduce_sums
from utils.engine.precision import Precision, for_inference


CROP_SHARE = 0.875  # --tta=crops: the side of each crop, as a share of the image's


def views(tta):
    """The view names --tta=<tta> averages over: "" -> ["image"], "flip" -> the image and its
    mirror, "crops" -> the centre and the 4 corner crops, "flip,crops" -> the 10 of both.
    (A boolean True, from an older config or caller, is "flip".)"""
    chosen = set(filter(None, ("flip" if tta is True else str(tta or "")).split(",")))
    crops = ["centre", "top-left", "top-right", "bottom-left", "bottom-right"] if "crops" in chosen else ["image"]
    return crops + [f"{crop}+flip" for crop in crops] if "flip" in chosen else crops


def view(images, name):
    """The view `name` (see views) of an N x C x H x W batch: a crop of CROP_SHARE of each
    side, scaled back to H x W (bilinear, antialiased), and / or mirrored."""
    crop, _, flip = name.partition("+")
    if crop != "image":
        height, width = images.shape[-2:]
        h, w = max(1, round(height * CROP_SHARE)), max(1, round(width * CROP_SHARE))
        top = {"centre": (height - h) // 2, "top-left": 0, "top-right": 0}.get(crop, height - h)
        left = {"centre": (width - w) // 2, "top-left": 0, "bottom-left": 0}.get(crop, width - w)
        part = images[..., top:top + h, left:left + w].float()
        images = F.interpolate(part, size=(height, width), mode="bilinear", align_corners=False,
                               antialias=False).to(images.dtype).contiguous(memory_format=_format(images))
    return images.flip(3) if flip else images


def _format(images):
    return torch.channels_last if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) \
        and not images.is_contiguous() else torch.contiguous_format


def predict(model, images, precision, tta=""):
    """Log-probabilities (N x K, float32) of a CPU or device batch; with --tta, of the mean
    of the class probabilities over its views (views()), in a fixed order: deterministic."""
    images = precision.to_device(images)
    names = views(tta)
    with precision.autocast():
        log_probabilities = [model(view(images, name)).float().log_softmax(1) for name in names]
    if len(log_probabilities) == 1:
        return log_probabilities[0]
    return torch.logsumexp(torch.stack(log_probabilities), 0) - math.log(len(names))


@torch.inference_mode()
def evaluate(model, loader, cfg, device, tta="", predicted=None):
    """Loss (the training criterion), accuracy, top-5 accuracy (more than 5 classes), Kaggle
    log loss and confusion counts of `model` on a labelled loader; the log-probabilities of
    each batch are appended to `predicted` when given. Under torchrun each rank reads its
    own share of the split (runtime.make_loader) and the sums and counts are added over
    ranks: every rank returns the metrics of the whole split, each image counted once, and
    `predicted` gets the whole split's, in order."""
    precision = Precision(cfg, device, getattr(loader, "dataset", None))
    model = for_inference(model, precision.memory_format)
    loss_meter, confusion, logloss = METERS.build("loss"), METERS.build("confusion", cfg.num_classes), METERS.build("logloss")
    top5, mine = 0, []
    for images, labels in loader:
        log_probabilities = predict(model, images, precision, tta)
        labels = labels.to(device)
        # Cross-entropy of the logits (nll of their log-softmax), unclipped: what training
        # minimises. val_logloss is Kaggle's metric on probabilities clipped to [1e-15, 1-1e-15].
        loss_meter.add_batch(F.nll_loss(log_probabilities, labels).item(), len(labels))
        probabilities = log_probabilities.exp()
        confusion.add(probabilities, labels)
        logloss.add(probabilities, labels)
        if cfg.num_classes > 5:
            top5 += int((log_probabilities.topk(5, 1).indices == labels[:, None]).any(1).sum())
        if predicted is not None:
            mine.append(log_probabilities.cpu())
    k = cfg.num_classes
    totals = reduce_sums([loss_meter.sum, logloss.total, top5, *confusion.conf.reshape(-1).tolist()])
    loss_sum, logloss_sum, top5 = totals[:3]
    counts = np.array(totals[3:], dtype=np.int64).reshape(k, k)
    seen = int(counts.sum())
    nan = math.nan
    metrics = {"val_loss": loss_sum / seen if seen else nan,
               "val_accuracy": float(np.trace(counts) / seen) if seen else nan,
               "val_logloss": logloss_sum / seen if seen else nan}
    if k > 5:
        metrics["val_top5"] = top5 / seen if seen else nan
    if predicted is not None:
        for part in gather(mine):  # contiguous shares: rank order is split order
            predicted += part
    return {**metrics, "confusion": counts.tolist()}
