"""Image classification (Dogs vs. Cats and any dataset of the DATASETS registry).

    train: fit on the train split, validate every epoch (the engine: utils/engine.py)
    val:   metrics of a checkpoint on the same validation split
    test:  P(dog) for every test image -> Kaggle submission csv

What classification means, and nothing else: the data, the model and its optimizer, one
step (cross-entropy), the evaluation (loss, accuracy, Kaggle log loss, confusion counts).
"""
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from data import readable
from data.dogcat import TEST_NAME as TEST_ID
from data.transforms import denormalize
from models import build_model, check_takes
from utils import checkpoint, runtime
from utils.engine import Experiment, load_for_inference
from utils.errors import UsageError, UserError, plural
from utils.lr_policy import LrPolicy
from utils.precision import Precision
from utils.registry import DATASETS, EXPERIMENTS, METERS
from utils.submission import write_submission

log = logging.getLogger(__name__)


def load_data(cfg, split):
    """The dataset of `split` (train | val | test) built by the --dataset registry entry."""
    dataset = DATASETS.build(cfg.dataset, cfg, split)
    log.info("%s split: %s", split, plural(len(dataset), "image"))
    return dataset


def build_optimizer(cfg, model):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def predict(model, images, precision, tta=False):
    """Log-probabilities (N x K, float32) of a CPU or device batch; with tta, of the average
    of the image's and its mirror's class probabilities."""
    images = precision.to_device(images)
    with precision.autocast():
        log_probabilities = model(images).float().log_softmax(1)
        if tta:
            mirrored = model(images.flip(3)).float().log_softmax(1)
            log_probabilities = torch.logaddexp(log_probabilities, mirrored) - math.log(2)
    return log_probabilities


@torch.inference_mode()
def evaluate(model, loader, cfg, device, tta=False):
    """Loss (the training criterion), accuracy, Kaggle log loss and confusion counts of
    `model` on a labelled loader."""
    model.eval()
    precision = Precision(cfg, device)
    loss_meter, confusion, logloss = METERS.build("loss"), METERS.build("confusion", cfg.num_classes), METERS.build("logloss")
    for images, labels in loader:
        log_probabilities = predict(model, images, precision, tta)
        labels = labels.to(device)
        # Cross-entropy of the logits (nll of their log-softmax), unclipped: what training
        # minimises. val_logloss is Kaggle's metric on probabilities clipped to [1e-15, 1-1e-15].
        loss_meter.add_batch(F.nll_loss(log_probabilities, labels).item(), len(labels))
        probabilities = log_probabilities.exp()
        confusion.add(probabilities, labels)
        logloss.add(probabilities, labels)
    return {"val_loss": loss_meter.average(), "val_accuracy": confusion.accuracy(),
            "val_logloss": logloss.value(), "confusion": confusion.value().tolist()}


@EXPERIMENTS.register("classify")
class Classify(Experiment):
    """Image classification: Dogs vs. Cats (Kaggle layout) and other labelled image sets."""

    commands = {
        "train": "train a model; writes <checkpoint-dir>/<env>/ (config.yaml, last.pth, best.pth, TensorBoard events)",
        "val": "print accuracy, log loss and the confusion matrix of a checkpoint on the validation split",
        "test": "predict the test folder and write the Kaggle submission csv (id,label = P(dog))",
    }
    monitors = {"val_logloss": "min", "val_loss": "min", "val_accuracy": "max"}

    def datasets(self):
        check_takes("model", self.cfg.model, ["num_classes"], "classifier")
        self.val_set = load_data(self.cfg, "val")
        train_set = load_data(self.cfg, "train")
        labels = set(getattr(train_set, "targets", ())) | set(getattr(self.val_set, "targets", ()))
        if labels and max(labels) >= self.cfg.num_classes:
            raise UsageError(f"the data has labels up to {max(labels)} ({max(labels) + 1} classes) but "
                             f"--num-classes={self.cfg.num_classes}; use --num-classes={max(labels) + 1}")
        return train_set, self.val_set

    def build(self, ctx):
        model = build_model(self.cfg)
        model.to(ctx.device, memory_format=ctx.precision.memory_format)
        optimizer = build_optimizer(self.cfg, model)
        return {"model": model, "optimizer": optimizer,
                "lr_policy": LrPolicy(optimizer, self.cfg, monitor_mode=self.monitors[self.cfg.monitor])}

    def step(self, batch, objects, ctx):
        images, labels = batch
        model, optimizer = objects["model"], objects["optimizer"]
        with ctx.precision.autocast():
            output = model(images)
            loss = F.cross_entropy(output, labels)
        optimizer.zero_grad(set_to_none=True)
        ctx.precision.backward_and_step(loss, optimizer)
        ctx.precision.scaler.update()
        accuracy = (output.detach().argmax(1) == labels).float().mean()
        return {"loss": loss.detach(), "accuracy": accuracy}

    def evaluate(self, objects, ctx):
        loader = runtime.make_loader(self.val_set, self.cfg, ctx.device, shuffle=False)
        metrics = evaluate(objects["model"], loader, self.cfg, ctx.device)
        confusion = metrics.pop("confusion")
        ctx.outputs.table("val/confusion", ["truth \\ predicted"] + [str(k) for k in range(len(confusion))],
                          [[str(k)] + row for k, row in enumerate(confusion)], ctx.state.global_step)
        return metrics

    def images(self, objects, ctx):
        if ctx.state.global_step:
            return {}  # the input grid, once, at the start of a run
        count = min(16, len(self.val_set))
        return {"inputs": denormalize(torch.stack([self.val_set[index][0] for index in range(count)]))}

    def load_model(self):
        """(model in eval mode, cfg adopted from the checkpoint, device) for val and test."""
        cfg, device, state, path = load_for_inference(self.cfg)
        model = build_model(cfg)
        checkpoint.load_weights(model, checkpoint.model_state(state), source=str(path))
        return model.to(device).eval(), cfg, device

    def val(self):
        """Print accuracy, log loss and the confusion matrix of a checkpoint on the val split."""
        model, cfg, device = self.load_model()
        dataset = load_data(cfg, "val")
        readable.report(dataset.skipped if hasattr(dataset, "skipped") else [])
        metrics = evaluate(model, runtime.make_loader(dataset, cfg, device, shuffle=False), cfg, device, tta=cfg.tta)
        names = ["cat", "dog"] if cfg.dataset == "dogcat" else [str(k) for k in range(cfg.num_classes)]
        width = max(len(n) for n in names) + 2
        lines = [f"val: {plural(len(dataset), 'image')}  accuracy {metrics['val_accuracy']:.4f}  log loss {metrics['val_logloss']:.4f}",
                 "confusion (rows = truth, columns = predicted):",
                 " " * width + "".join(f"{n:>{width}}" for n in names)]
        lines += [f"{names[k]:<{width}}" + "".join(f"{c:>{width}}" for c in row) for k, row in enumerate(metrics["confusion"])]
        print("\n".join(lines))

    @torch.inference_mode()
    def test(self):
        """Write the Kaggle submission csv (id,label = P(dog)) for the test folder."""
        runtime.check_output_file(self.cfg.result_file, "--result-file")
        model, cfg, device = self.load_model()
        if cfg.num_classes != 2:
            raise UserError(f"test writes P(class 1) for a 2-class model; this one has {cfg.num_classes} classes")
        dataset = load_data(cfg, "test")
        ids, dog_probabilities, precision = [], [], Precision(cfg, device)
        for images, batch_ids in runtime.make_loader(dataset, cfg, device, shuffle=False):
            dog_probabilities += predict(model, images, precision, cfg.tta)[:, 1].exp().tolist()
            ids += batch_ids.tolist()
        skipped = getattr(dataset, "skipped", [])
        if skipped:
            # Kaggle wants a row for every id: an unreadable image gets the uninformed 0.5.
            readable.report(skipped)
            log.warning("%s got P(dog)=0.5 in the csv (Kaggle wants a row for every id)",
                        plural(len(skipped), "unreadable test image"))
            ids += [int(TEST_ID.fullmatch(Path(path).name).group(1)) for path, _ in skipped]
            dog_probabilities += [0.5] * len(skipped)
        rows = write_submission(cfg.result_file, ids, dog_probabilities, clip=cfg.clip)
        print(f"wrote {plural(rows, 'row')} to {cfg.result_file}")
