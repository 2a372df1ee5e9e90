"""Image classification (Dogs vs. Cats and any dataset of the DATASETS registry).

    train: fit on the train split, validate every epoch, keep last.pth and best.pth
    val:   metrics of a checkpoint on the same validation split
    test:  P(dog) for every test image -> Kaggle submission csv

Read top to bottom: load_data, train_one_epoch, evaluate, train, val, test.
"""
import logging
import math
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import configs
from configs.loader import flag
from data.transforms import denormalize
from models import build_model
from utils import checkpoint, debug, resume, runtime, seeding
from utils.errors import UsageError, UserError
from utils.lr_policy import LrPolicy
from utils.registry import DATASETS, EXPERIMENTS, METERS
from utils.safe_stop import NonFiniteLoss, SafeStop
from utils.submission import write_submission
from utils.visualize import Visualizer

log = logging.getLogger(__name__)
# Options a checkpoint defines: val/test take them from the checkpoint's config unless given.
MODEL_KEYS = ("model", "num_classes", "image_size", "dataset", "train_data_root", "val_ratio", "seed")
MONITOR_MODES = {"val_logloss": min, "val_loss": min, "val_accuracy": max}


def load_data(cfg, split):
    """The dataset of `split` (train | val | test) built by the --dataset registry entry."""
    dataset = DATASETS.build(cfg.dataset, cfg, split)
    log.info("%s split: %d images", split, len(dataset))
    return dataset


def train_one_epoch(model, loader, optimizer, scaler, cfg, device, epoch, progress, vis, stopper):
    """One pass over `loader` (which may start mid-epoch); updates `progress` in place and
    returns (mean loss, accuracy, images/s) of the steps run in this call."""
    model.train()
    loss_meter, confusion = METERS.build("loss"), METERS.build("confusion", cfg.num_classes)
    if progress["step_in_epoch"] and progress.get("partial"):  # resumed mid-epoch
        loss_meter.load_state_dict(progress["partial"]["loss"])
        confusion.load_state_dict(progress["partial"]["confusion"])
    progress["meters"] = (loss_meter, confusion)
    window = progress.setdefault("loss_window", [])  # losses since the last train/loss point
    images_done, data_wait = 0, 0.0
    use_amp = cfg.amp and device.type == "cuda"
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    bar = tqdm(total=len(loader.sampler), desc=f"epoch {epoch + 1}/{cfg.max_epoch}", unit="img",
               disable=not cfg.progress, leave=False, file=sys.stderr, mininterval=1.0)
    started = tick = time.perf_counter()
    for images, labels in loader:
        data_wait += time.perf_counter() - tick
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            output = model(images)
            loss = F.cross_entropy(output, labels)
        if stopper.during_step(progress["global_step"] + 1) == "nan":
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            raise NonFiniteLoss(epoch, progress["step_in_epoch"], float(loss))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        progress["step_in_epoch"] += 1
        progress["global_step"] += 1
        loss_meter.add_batch(loss.item(), len(labels))
        confusion.add(output.detach().float(), labels)
        window.append(loss.item())
        images_done += len(labels)
        images_per_second = images_done / (time.perf_counter() - started)
        bar.update(len(labels))
        bar.set_postfix(loss=f"{loss_meter.average():.4f}", acc=f"{confusion.accuracy():.3f}",
                        lr=f"{optimizer.param_groups[0]['lr']:.2e}", img_s=f"{images_per_second:.0f}", refresh=False)
        if progress["global_step"] % cfg.print_freq == 0:
            vis.plot("train/loss", sum(window) / len(window), progress["global_step"])
            vis.plot("train/images_per_second", images_per_second, progress["global_step"])
            window.clear()
            debug.check(cfg)  # `touch /tmp/debug` -> ipdb here, with model/loss in scope
        if stopper.requested:
            break
        tick = time.perf_counter()
    bar.close()
    elapsed = time.perf_counter() - started
    if images_done:
        log.info("epoch %d: waited %.0f%% of %.1fs for data", epoch + 1, 100 * data_wait / max(elapsed, 1e-9), elapsed)
    return loss_meter.average(), confusion.accuracy(), images_done / max(elapsed, 1e-9)


@torch.inference_mode()
def evaluate(model, loader, cfg, device, tta=False):
    """Loss, accuracy, Kaggle log loss and confusion counts of `model` on a labelled loader."""
    model.eval()
    loss_meter, confusion, logloss = METERS.build("loss"), METERS.build("confusion", cfg.num_classes), METERS.build("logloss")
    for images, labels in loader:
        probabilities = predict_batch(model, images.to(device), cfg, tta)
        labels = labels.to(device)
        loss_meter.add_batch(F.nll_loss(probabilities.clamp_min(1e-15).log(), labels).item(), len(labels))
        confusion.add(probabilities, labels)
        logloss.add(probabilities, labels)
    return {"val_loss": loss_meter.average(), "val_accuracy": confusion.accuracy(),
            "val_logloss": logloss.value(), "confusion": confusion.value().tolist()}


def predict_batch(model, images, cfg, tta=False):
    """Class probabilities (N x K, float32); with tta, averaged with the mirrored images."""
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=torch.float16, enabled=cfg.amp and images.device.type == "cuda"):
        probabilities = model(images).float().softmax(1)
        if tta:
            probabilities = (probabilities + model(images.flip(3)).float().softmax(1)) / 2
    return probabilities


def train(cfg):
    """Train cfg.model on cfg.dataset; see the module docstring."""
    resumed = resume.load_resume_state(cfg)  # None for a fresh run
    cfg = resumed["config"] if resumed else runtime.name_run(cfg)
    device = runtime.pick_device(cfg)
    train_set, val_set = load_data(cfg, "train"), load_data(cfg, "val")
    run_dir = runtime.start_run(cfg)  # only now: a run that cannot start leaves no folder
    seeding.seed_everything(cfg.seed)
    model = build_model(cfg)
    if cfg.load_model_path and resumed is None:
        model.load(cfg.load_model_path)
        log.info("initial weights from %s", cfg.load_model_path)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    optimizer = build_optimizer(cfg, model)
    policy = LrPolicy(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    progress = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None}
    if resumed is not None:
        resume.restore(resumed["state"], model, optimizer, policy, scaler, progress)
    vis = Visualizer(run_dir, cfg.visualizer, env=cfg.env, purge_step=progress["global_step"] or None)
    if progress["global_step"] == 0:
        sample_images, _ = next(iter(runtime.make_loader(val_set, cfg, torch.device("cpu"), shuffle=False)))
        vis.img("inputs", denormalize(sample_images[:16]), 0)
    val_loader = runtime.make_loader(val_set, cfg, device, shuffle=False)

    def snapshot():
        return checkpoint_state(model, optimizer, policy, scaler, progress, cfg)

    with SafeStop(cfg, run_dir, snapshot, vis) as stopper:
        for epoch in range(progress["epoch"], cfg.max_epoch):
            loader = runtime.make_loader(train_set, cfg, device, shuffle=True, epoch=epoch,
                                         start=progress["step_in_epoch"] * cfg.batch_size)
            train_loss, train_accuracy, images_per_second = train_one_epoch(
                model, loader, optimizer, scaler, cfg, device, epoch, progress, vis, stopper)
            if stopper.requested:
                break  # SafeStop saves last.pth (mid-epoch) on the way out
            metrics = evaluate(model, val_loader, cfg, device)
            lr = policy.step(epoch, train_loss, metrics["val_loss"])
            progress["epoch"], progress["step_in_epoch"] = epoch + 1, 0
            improved = is_improvement(cfg.monitor, metrics[cfg.monitor], progress["best"])
            if improved:
                progress["best"] = {"metric": cfg.monitor, "value": metrics[cfg.monitor], "epoch": epoch + 1}
            state = snapshot()  # after validation: best.pth is the validated model
            checkpoint.save_checkpoint(state, run_dir / "last.pth")
            if improved:
                checkpoint.save_checkpoint(state, run_dir / "best.pth")
            resume.keep_epoch_file(cfg, run_dir, state, epoch + 1)
            report_epoch(vis, epoch, progress, train_loss, train_accuracy, images_per_second, metrics, lr, improved)
    vis.close()
    best = progress["best"]
    summary = f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']}" if best else "no finite validation metric"
    print(f"trained {cfg.env}: {summary}; checkpoints in {run_dir}")


def build_optimizer(cfg, model):
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def is_improvement(monitor, value, best):
    if math.isnan(value):
        return False
    return best is None or MONITOR_MODES[monitor](value, best["value"]) != best["value"]


def checkpoint_state(model, optimizer, policy, scaler, progress, cfg):
    """Everything a bit-exact resume needs, as plain data (see utils/checkpoint.py)."""
    partial = None
    if progress["step_in_epoch"]:  # mid-epoch: the epoch's meters so far
        loss_meter, confusion = progress["meters"]
        partial = {"loss": loss_meter.state_dict(), "confusion": confusion.state_dict()}
    return {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_policy": policy.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "epoch": progress["epoch"], "step_in_epoch": progress["step_in_epoch"],
        "global_step": progress["global_step"], "best": progress["best"], "partial": partial,
        "loss_window": list(progress.get("loss_window", [])),
        "rng": seeding.rng_states(), "config": configs.as_dict(cfg),
    }


def report_epoch(vis, epoch, progress, train_loss, train_accuracy, images_per_second, metrics, lr, improved):
    step = progress["global_step"]
    for name in ("val_loss", "val_accuracy", "val_logloss"):
        vis.plot(name.replace("_", "/", 1), metrics[name], step)
    vis.plot("train/epoch_loss", train_loss, step)
    vis.plot("train/epoch_accuracy", train_accuracy, step)
    vis.plot("lr", lr, step)
    vis.plot("images_per_second", images_per_second, step)
    vis.table("val/confusion", ["truth \\ predicted"] + [str(k) for k in range(len(metrics["confusion"]))],
              [[str(k)] + row for k, row in enumerate(metrics["confusion"])], step)
    vis.flush()
    log.info("epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f logloss %.4f | lr %.2e | %.0f img/s%s",
             epoch + 1, train_loss, train_accuracy, metrics["val_loss"], metrics["val_accuracy"],
             metrics["val_logloss"], lr, images_per_second, " | best" if improved else "")


def load_for_inference(cfg):
    """(model on device, cfg, device) for val/test: checkpoint from --load-model-path, else
    <run dir>/best.pth or last.pth; model-defining options come from its saved config."""
    if cfg.load_model_path:
        path = cfg.load_model_path
    elif cfg.env:
        candidates = [cfg.run_dir / "best.pth", cfg.run_dir / "last.pth"]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise UserError(f"no checkpoint in {cfg.run_dir} (looked for best.pth, last.pth); check --env and --checkpoint-dir")
    else:
        raise UsageError("give --load-model-path=<checkpoint.pth> or --env=<run name> (a folder under --checkpoint-dir)")
    state = checkpoint.load_checkpoint(path)
    saved = state.get("config") if isinstance(state.get("config"), dict) else None
    if saved:
        changed = configs.changed_options(cfg)
        adopted = {}
        for key in MODEL_KEYS:
            if key in changed and changed[key] != saved.get(key):
                if key in ("model", "num_classes", "image_size"):
                    raise UsageError(f"{flag(key)}={changed[key]} differs from the checkpoint's {saved.get(key)!r}; drop the flag")
            elif key in saved:
                adopted[key] = saved[key]
        cfg = configs.load_config({**changed, **adopted})
    device = runtime.pick_device(cfg)
    model = build_model(cfg)
    checkpoint.load_weights(model, checkpoint.model_state(state), source=str(path))
    log.info("loaded %s", path)
    return model.to(device).eval(), cfg, device


def val(cfg):
    """Print accuracy, log loss and the confusion matrix of a checkpoint on the val split."""
    model, cfg, device = load_for_inference(cfg)
    dataset = load_data(cfg, "val")
    metrics = evaluate(model, runtime.make_loader(dataset, cfg, device, shuffle=False), cfg, device, tta=cfg.tta)
    names = ["cat", "dog"] if cfg.dataset == "dogcat" else [str(k) for k in range(cfg.num_classes)]
    width = max(len(n) for n in names) + 2
    lines = [f"val: {len(dataset)} images  accuracy {metrics['val_accuracy']:.4f}  log loss {metrics['val_logloss']:.4f}",
             "confusion (rows = truth, columns = predicted):",
             " " * width + "".join(f"{n:>{width}}" for n in names)]
    lines += [f"{names[k]:<{width}}" + "".join(f"{c:>{width}}" for c in row) for k, row in enumerate(metrics["confusion"])]
    print("\n".join(lines))


@torch.inference_mode()
def test(cfg):
    """Write the Kaggle submission csv (id,label = P(dog)) for the test folder."""
    model, cfg, device = load_for_inference(cfg)
    if cfg.num_classes != 2:
        raise UserError(f"test writes P(class 1) for a 2-class model; this one has {cfg.num_classes} classes")
    dataset = load_data(cfg, "test")
    ids, dog_probabilities = [], []
    for images, batch_ids in runtime.make_loader(dataset, cfg, device, shuffle=False):
        dog_probabilities += predict_batch(model, images.to(device), cfg, cfg.tta)[:, 1].tolist()
        ids += batch_ids.tolist()
    rows = write_submission(cfg.result_file, ids, dog_probabilities, clip=cfg.clip)
    print(f"wrote {rows} rows to {cfg.result_file}")


@EXPERIMENTS.register("classify")
class Classify:
    """Image classification: Dogs vs. Cats (Kaggle layout) and other labelled image sets."""

    train = staticmethod(train)
    val = staticmethod(val)
    test = staticmethod(test)
