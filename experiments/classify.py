"""Image classification: Dogs vs. Cats, CIFAR-10, MNIST, any image-folder tree (--dataset).

    train: fit on the train split, validate every epoch (the engine: utils/engine/loop.py)
    val:   metrics of a checkpoint on the same validation split, per class and confused
    test:  predict the test split and write a csv, by data set:
             dogcat          id,label = P(dog)              (Kaggle's Dogs vs. Cats)
             cifar10, mnist  id,label = class name, id = 1-based position in the official
                             test split (Kaggle's CIFAR-10 and Digit Recognizer numbering);
                             its labels also give the accuracy and the per-class table
             imagefolder     path,label,probability         (any images, paths as given)

What classification means, and nothing else: the data, the model and its optimizer, one
step (cross-entropy, with --label-smoothing, on targets mixed by --mixup / --cutmix), the
evaluation (loss, accuracy, top-5 when there are more than 5
classes, Kaggle log loss, confusion counts). --num-classes and --image-size come from the
data unless given; a given --num-classes that differs from the data's is an error.

Training recipes: the data set's augmentation, tuned or turned off (--augment, --hflip,
--crop-scale, --crop-padding; data/transforms.py); label smoothing; mixup and CutMix
(torchvision.transforms.v2, one of them per batch when both are on); and the engine's
--ema (the evaluation measures the moving average beside the raw weights: val_*_ema),
--accumulate, --warmup-epochs and --patience. With mixed targets the training accuracy is
the target's share of the predicted class (lam for the first image's class, 1 - lam for
the second's): plain accuracy when nothing is mixed, and honest about what mixing asks.
"""
import dataclasses
import logging

import torch
import torch.nn.functional as F

from configs.loader import run_monitors
from data import readable
from data.folds import item_id
from data.transforms import model_input
from experiments.classify_eval import evaluate, predict
from experiments.classify_data import (balanced_sample, check_augmentation, check_tta, class_names, infer_classes,
                                       load_data, resolve_from_data)
from models import build_for_weights, build_model, check_takes, data_channels
from utils import loggers, tables
from utils.core.errors import UsageError, UserError, plural
from utils.core.registry import EXPERIMENTS
from utils.engine import checkpoint, distributed, runtime
from utils.engine.averages import chosen_average
from utils.engine.experiment import Experiment, eval_loader, gather
from utils.engine.lr_policy import LrPolicy
from utils.engine.precision import Precision, for_inference
from utils.engine.state import load_for_inference
from utils.export import Exportable, onnx_runtime

log = logging.getLogger(__name__)


def mixer(cfg):
    """torchvision's MixUp and / or CutMix of a batch (image batch, labels) -> (mixed
    images, N x K soft targets); with both, one per batch (CutMix with probability
    --mixup-switch-prob). None without --mixup and --cutmix."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    from torchvision.transforms import v2  # torchvision only for the runs that mix

    chosen = ([v2.MixUp(alpha=cfg.mixup, num_classes=cfg.num_classes)] if cfg.mixup else []) + \
        ([v2.CutMix(alpha=cfg.cutmix, num_classes=cfg.num_classes)] if cfg.cutmix else [])
    if len(chosen) == 1:
        return chosen[0]
    return v2.RandomChoice(chosen, p=[1 - cfg.mixup_switch_prob, cfg.mixup_switch_prob])


@EXPERIMENTS.register("classify")
class Classify(Experiment):
    """Image classification: Dogs vs. Cats (Kaggle layout) and other labelled image sets."""
    commands = {
        "train": "train a model; writes <checkpoint-dir>/<env>/ (config.yaml, last.pth, best.pth, TensorBoard events)",
        "val": "print accuracy, log loss, per-class accuracy and the confusion matrix of a checkpoint on the validation split",
        "test": "predict the test split and write the csv (dogcat: Kaggle's id,label = P(dog); cifar10 / mnist: id,label = class; imagefolder: path,label,probability)",
    }
    monitors = {"val_logloss": "min", "val_loss": "min", "val_accuracy": "max"}  # the first is --monitor's default
    # val_loss is the unclipped cross-entropy: val_logloss but for probabilities beyond 1e-15
    unprinted = ("val_loss", "val_loss_ema")
    ema_modules = ("model",)
    options = {
        "num_classes": {"default": None, "type": "int", "doc": "output classes; default: the data's (dogcat 2: cat 0, dog 1; "
                        "cifar10 / mnist 10; imagefolder: its class folders)", "role": "model", "minimum": 1},
        "result_file": {"default": "", "doc": "csv written by `test`; '' = result.csv in the run dir (of --env, or of a "
                        "--load-model-path inside one), or <weights file>.csv beside a bare weights file. Columns per data "
                        "set: dogcat id,label = P(dog) (Kaggle's); cifar10 / mnist id,label = class name; imagefolder "
                        "path,label,probability", "role": "execution", "path": True,
                        "commands": ["test"]},
        "clip": {"default": 0.005, "doc": "clip P(dog) into [clip, 1-clip]: one confident mistake costs -ln(clip) of log loss "
                 "(5.3) instead of 34.5; 0 = no clip", "role": "execution", "minimum": 0.0,
                 "below": [0.5, "predictions are clipped into [clip, 1-clip]"], "commands": ["test"]},
        "tta": {"default": "", "doc": "test-time augmentation: the mean of the class probabilities over views of each "
                "image: flip (and its mirror image), crops (the centre and 4 corners at 7/8 of the side, scaled back), "
                "flip,crops (the 10 of both); bare flag = flip; '' = none. train --folds: for the OOF predictions",
                "role": "execution", "bare": "flip", "choices": ["", "flip", "crops", "flip,crops"],
                "commands": ["val", "test", "train"]},
        "partial": {"default": False, "doc": "val / test --env=<group>: use the folds that have finished (named in the "
                    "log) when some have not, instead of refusing", "role": "invocation", "commands": ["val", "test"]},
        "augment": {"default": True, "doc": "training augmentation, as --hflip, --crop-scale, --crop-padding set it; "
                    "false = none", "inherited": True, "commands": ["train"]},
        "hflip": {"default": None, "type": "float", "doc": "chance of mirroring a training image; default: the data set's "
                  "(0.5; mnist 0)", "minimum": 0.0, "maximum": 1.0, "inherited": True, "commands": ["train"]},
        "crop_scale": {"default": None, "type": "float", "doc": "dogcat, imagefolder: least area share of a random crop "
                       "(default 0.08; 1 = whole)", "minimum": 0.0, "maximum": 1.0, "commands": ["train"]},
        "crop_padding": {"default": None, "type": "int", "doc": "cifar10, mnist: pad, then crop back at random "
                         "(default: cifar10 4, mnist 0)", "minimum": 0, "commands": ["train"]},
        "label_smoothing": {"default": 0.0, "doc": "train on (1 - e) x the label + e / K on every class (0 = off; 0.1 is "
                            "common)", "minimum": 0.0, "below": [1, "a share of the target spread over every class"],
                            "commands": ["train"]},
        "mixup": {"default": 0.0, "doc": "mixup's Beta alpha: blend image pairs and their labels (0 = off; 0.2 is common)",
                  "minimum": 0.0, "smallest": [1e-4, "float32's Beta sampling degenerates below it"], "commands": ["train"]},
        "cutmix": {"default": 0.0, "doc": "CutMix's Beta alpha: paste a box of another image, labels by area (0 = off; 1.0)",
                   "minimum": 0.0, "smallest": [1e-4, "float32's Beta sampling degenerates below it"], "commands": ["train"]},
        "mixup_switch_prob": {"default": 0.5, "doc": "with --mixup and --cutmix both on: the chance a batch uses CutMix",
                              "minimum": 0.0, "maximum": 1.0, "commands": ["train"]},
        "runtime": {"default": "torch", "doc": "what computes val / test: torch (the checkpoint) | onnxruntime (the --onnx "
                    "file that `python main.py export` wrote, on the CPU; needs `bash scripts/setup.sh --export`)",
                    "role": "execution", "choices": ["torch", "onnxruntime"], "commands": ["val", "test"]},
        "onnx": {"default": "", "doc": "the ONNX file --runtime=onnxruntime runs; '' = model.onnx in the run dir (where "
                 "`export` writes it)", "role": "execution", "path": True, "commands": ["val", "test"]},
    }

    def datasets(self):
        check_takes("model", self.cfg.model, ["num_classes"], "classifier")
        if self.cfg.tta and not self.cfg.folds:
            raise UsageError(f"train --tta={self.cfg.tta} is for the out-of-fold predictions of --folds; give --tta to "
                             f"val / test instead")
        self.val_set = load_data(self.cfg, "val")
        train_set = load_data(self.cfg, "train")
        given = self.cfg.num_classes
        self.classes = list(train_set.classes or infer_classes(train_set, self.val_set, given, self.cfg.dataset))
        if given is not None and given != len(self.classes):
            shown = ", ".join(self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
            raise UsageError(f"--num-classes={given} but the data has {len(self.classes)} classes ({shown}); "
                             f"drop --num-classes (it comes from the data) or use --num-classes={len(self.classes)}")
        size = train_set.image_size or self.cfg.image_size or 224
        self.cfg = dataclasses.replace(self.cfg, num_classes=len(self.classes), image_size=size)
        check_augmentation(self.cfg, train_set)
        check_tta(self.cfg, train_set)  # --folds: the OOF predictions' views, refused before training
        return train_set, self.val_set

    def checkpoint_info(self):
        return {"classes": self.classes}

    def build(self, ctx):
        model = build_model(self.cfg)
        model.to(ctx.device, memory_format=ctx.precision.memory_format)
        optimizer = ctx.optimizer(model)
        self.mix = mixer(self.cfg)
        monitor_mode = run_monitors(self.cfg.experiment, self.cfg.ema)[self.cfg.monitor]
        return {"model": model, "optimizer": optimizer,
                "lr_policy": LrPolicy(optimizer, self.cfg, monitor_mode=monitor_mode)}

    def step(self, batch, objects, ctx):
        images, labels = batch
        # Mixed images and soft targets (N x K), drawn from the global RNG (saved with each
        # checkpoint: a resumed run draws the same lam and boxes).
        targets = labels
        if self.mix is not None:
            images, targets = self.mix(images, labels)
            images = images.contiguous(memory_format=ctx.precision.memory_format)
        with ctx.precision.autocast():
            output = objects["model"](images)
            loss = F.cross_entropy(output, targets, label_smoothing=self.cfg.label_smoothing)
        ctx.optimize(loss, "optimizer")
        predicted = output.detach().argmax(1)
        if self.mix is None:
            accuracy = (predicted == labels).float().mean()
        else:  # the mixed target's share of the predicted class (see the module docstring)
            accuracy = targets.gather(1, predicted[:, None]).mean()
        return {"loss": loss.detach(), "accuracy": accuracy}

    def evaluate(self, objects, ctx):
        if getattr(self, "val_loader", None) is None:  # one for the run: its workers persist
            self.val_loader = ctx.eval_loader(self.val_set)
        metrics = {}
        # Unwrapped: no DDP collective per batch, as ranks' shares differ in size. With --ema,
        # the moving average too, as val_*_ema.
        for suffix, model in (("", ctx.unwrap("model")), ("_ema", ctx.averaged("model"))):
            if model is None:
                continue
            measured = evaluate(model, self.val_loader, self.cfg, ctx.device)
            confusion = measured.pop("confusion")
            ctx.outputs.table(f"val/confusion{suffix}", ["truth \\ predicted"] + self.classes,
                              [[name] + row for name, row in zip(self.classes, confusion)], ctx.state.global_step)
            metrics.update({f"{name}{suffix}": value for name, value in measured.items()})
        return metrics

    def images(self, objects, ctx):
        if ctx.state.global_step:
            return {}  # the input grid, once, at the start of a run
        chosen = balanced_sample(self.val_set.targets or range(len(self.val_set)), 16)
        return {"inputs": self.val_set.denormalize(torch.stack([self.val_set[index][0] for index in chosen]))}

    def load_model(self, split):
        """(model in eval mode, cfg adopted from the checkpoint, device, the checkpoint's info,
        the dataset of `split`) for val and test. The data is checked before the model is
        built; a bare weights file (the book's model.save()) gets the options a run resolves
        from its data (--num-classes, --image-size) from the data here too."""
        cfg, device, state, path = load_for_inference(self.cfg)
        if cfg.onnx and cfg.runtime != "onnxruntime":
            raise UsageError("--onnx is the file --runtime=onnxruntime runs; add --runtime=onnxruntime")
        if cfg.runtime == "onnxruntime":
            onnx_runtime.require("onnxruntime", why="--runtime=onnxruntime")
            device = torch.device("cpu")  # the CPU build of ONNX Runtime (the export extra)
        else:
            weights, source = chosen_weights(cfg, state, path)
        dataset = load_data(cfg, split)
        check_tta(cfg, dataset)
        cfg, classes = resolve_from_data(cfg, dataset, path)
        info = state.get("info") or {"classes": classes}
        if cfg.runtime == "onnxruntime":
            return onnx_model(cfg, state, path), cfg, device, info, dataset
        model = build_for_weights(cfg, device)
        checkpoint.load_weights(model, weights, source=source)
        model = for_inference(model.to(device), Precision(cfg, device).memory_format)
        return model, cfg, device, info, dataset

    def exportable(self, state, path):
        """The model of checkpoint `state` (its EMA weights unless --use-ema=false), taking
        normalised float32 images; the metadata says what a caller needs: the class names and
        how to turn an image into the input (size, resize, mean, std)."""
        cfg = self.cfg
        if cfg.num_classes is None:
            raise UsageError(f"{path} holds weights only, not the model or the number of classes they were trained "
                             f"for; give --model=<its architecture> --num-classes=K (and --image-size=N when not 224), "
                             f"or export a run's best.pth / last.pth")
        cfg = dataclasses.replace(cfg, image_size=cfg.image_size or 224)
        average = chosen_average(cfg, state, "model", path)
        model = build_for_weights(cfg, torch.device("cpu"))
        checkpoint.load_weights(model, checkpoint.model_state(state) if average is None else average,
                                source=f"{path}{'' if average is None else ' (model_ema)'}")
        spec = model_input(cfg.dataset, cfg.image_size)
        classes = (state.get("info") or {}).get("classes") or [str(k) for k in range(cfg.num_classes)]
        metadata = {"experiment": cfg.experiment, "model": cfg.model, "dataset": cfg.dataset, "classes": list(classes),
                    **spec, "weights": "raw" if average is None else "ema", "epoch": state.get("epoch"),
                    "global_step": state.get("global_step"),
                    "about": "input: images resized as 'resize' says, RGB (grey when channels is 1) scaled to [0, 1], "
                             "minus mean, over std, NCHW; output: logits, whose softmax gives the class probabilities"}
        return Exportable(model, "images", "logits", (spec["channels"], cfg.image_size, cfg.image_size), metadata)

    def val(self):
        """Print accuracy, log loss, per-class accuracy and the confusion matrix of a
        checkpoint on the val split."""
        model, cfg, device, info, dataset = self.load_model("val")
        if distributed.is_main():
            readable.report(dataset.skipped)
        metrics = evaluate(model, eval_loader(dataset, cfg, device), cfg, device, tta=cfg.tta)
        if distributed.is_main():
            print(tables.report("val", len(dataset), class_names(dataset, cfg, info), metrics))

    @torch.inference_mode()
    def test(self):
        """Predict the test split and write what its data set writes (see the module
        docstring); a labelled test split also prints its metrics."""
        self.cfg = dataclasses.replace(self.cfg, result_file=runtime.output_file(self.cfg, "result_file", "result.csv"))
        runtime.check_output_file(self.cfg.result_file, "--result-file")
        predicted = self.predictions("test")
        if distributed.is_main():
            self.write_test(predicted, self.cfg.result_file)

    def write_test(self, predicted, result_file):
        """Write predictions() of the test split as `test` does (an ensemble's too)."""
        write_predictions(predicted, result_file)

    @torch.inference_mode()
    def predictions(self, split):
        """The checkpoint's predictions of `split` (with --tta): {"dataset", "cfg", "names",
        "keys" (the dataset's, in split order), "log_probabilities" (N x K, on the CPU),
        "metrics" (of a labelled split, else None)}; every rank returns the whole split's."""
        model, cfg, device, info, dataset = self.load_model(split)
        names = class_names(dataset, cfg, info)
        loader = eval_loader(dataset, cfg, device)
        metrics = None
        if dataset.targets is not None:  # a labelled split (cifar10, mnist's test; a fold's val): its metrics too
            parts = []
            metrics = evaluate(model, loader, cfg, device, tta=cfg.tta, predicted=parts)
            keys = list(dataset.targets)
        else:
            precision, keys, parts = Precision(cfg, device, dataset), [], []
            for images, batch_keys in loader:
                parts.append(predict(model, images, precision, cfg.tta).cpu())
                keys += batch_keys.tolist()
            shares = gather((keys, parts))  # contiguous shares: rank order is split order
            keys, parts = [key for share, _ in shares for key in share], [part for _, share in shares for part in share]
        log_probabilities = torch.cat(parts) if parts else torch.empty(0, cfg.num_classes)
        return {"dataset": dataset, "cfg": cfg, "names": names, "keys": keys, "log_probabilities": log_probabilities,
                "metrics": metrics}

    def held_out(self):
        """A fold run's predictions of its held-out fold (train --folds): {"ids" (each item's
        identity: its path relative to the data, or position), "labels" (class indices),
        "classes", "log_probabilities" (N x K)}, from the weights `val` uses, with --tta."""
        predicted = self.predictions("val")
        ids = [item_id(identity) for identity in predicted["dataset"].identities()]
        return {"ids": ids, "labels": [int(label) for label in predicted["keys"]], "classes": predicted["names"],
                "log_probabilities": predicted["log_probabilities"]}


def write_predictions(predicted, result_file):
    """Write `test`'s csv of predictions() (its data set's format) and say what was written;
    a labelled test split also gets its metrics printed."""
    cfg, dataset = predicted["cfg"], predicted["dataset"]
    readable.report(dataset.skipped)
    rows = dataset.write_predictions(result_file, predicted["keys"], predicted["log_probabilities"], predicted["names"],
                                     dataclasses.replace(cfg, result_file=result_file))
    print(f"wrote {plural(rows, 'row')} to {result_file}")
    loggers.attach_output(cfg, result_file, "predictions")  # the run's MLflow / W&B runs, if it has any
    if predicted["metrics"] is not None:
        print(tables.report("test", len(dataset), predicted["names"], predicted["metrics"]))


def onnx_model(cfg, state, path):
    """The --onnx file as a model val / test call (onnx_runtime.OnnxModel), checked against the
    run: it must take this run's images and give its number of classes. A file exported
    from another checkpoint of the run (an older best.pth) is used, with a warning."""
    onnx_file = cfg.onnx or runtime.default_output(cfg, "model.onnx")
    onnx_runtime.check_file(onnx_file)
    model = onnx_runtime.OnnxModel(onnx_file, cfg.threads)
    taken = (data_channels(cfg.dataset), cfg.image_size, cfg.image_size)
    export_hint = f"export this run's model with `{runtime.main_command()} export {runtime.run_flags(cfg)}`"
    if model.item_shape != taken:
        raise UserError(f"{onnx_file} takes {' x '.join(map(str, model.item_shape))} images but this run's are "
                        f"{' x '.join(map(str, taken))}; {export_hint}")
    model.require_logits()
    if model.classes not in (None, cfg.num_classes):
        raise UserError(f"{onnx_file} gives {model.classes} classes but this run has {cfg.num_classes}; {export_hint}")
    exported = model.metadata
    source, step = exported.get("exported_from"), exported.get("global_step")
    if exported and (source is None or step is None):
        log.warning("%s does not say which checkpoint it was exported from (not written by export?); if it is not this "
                    "run's model, %s", onnx_file, export_hint)
    elif exported and (step, source) != (state.get("global_step"), str(path)):
        log.warning("%s was exported from %s at step %s; this run's %s is at step %s: %s", onnx_file, source, step, path,
                    state.get("global_step"), export_hint)
    log.info("ONNX Runtime %s on the CPU, %d thread(s): %s", onnx_runtime.version(), model.threads, onnx_file)
    return model


def chosen_weights(cfg, state, path):
    """(model weights, where they come from) for val / test: the moving average of a run
    trained with --ema unless --use-ema=false, else the raw weights."""
    average = chosen_average(cfg, state, "model", path)
    if average is not None:
        return average, f"{path} (model_ema)"
    return checkpoint.model_state(state), str(path)


