"""Training recipes, each checked for what it computes: augmentation control, label smoothing,
mixup / CutMix, EMA, gradient accumulation (and DDP's no_sync), lr warm-up, early stopping;
their options' errors; and a run with all of them stopped and resumed bit for bit."""
import csv
import json
import math
import re
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load, make_cifar10, make_dogcat, run_cli, tiny_flags, with_flags

from data import transforms
from data.image_files import ImageFiles
from data.sampling import augmentation_rng
from utils.core.errors import UsageError
from utils.engine.averages import add_averages
from utils.engine.experiment import Context
from utils.engine.loop import accumulation_place, gradients_kept_local
from utils.engine.precision import Precision
from utils.engine.state import TrainState


def context(**options):
    values = dict(amp=False, channels_last=False, grad_clip=0.0, seed=3, warmup_epochs=0.0, ema=0.0, ema_warmup=0.0)
    cfg = types.SimpleNamespace(**{**values, **options})
    return Context(cfg, torch.device("cpu"), Precision(cfg, torch.device("cpu")), TrainState(), outputs=None)


def config(**flags):
    import configs

    return configs.load_config(flags)


# -- augmentation you control ---------------------------------------------------------------
def test_hflip_mirrors_with_its_probability_and_crop_scale_bounds_the_crop(tmp_path):
    make_dogcat(tmp_path, per_class=1, test_images=0, extras=False)
    path = tmp_path / "train" / "cat.0.jpg"
    plain = transforms.train_image(path, 16, augmentation_rng(3, (0, 0)), transforms.Augment(hflip=0.0))
    mirrored = transforms.train_image(path, 16, augmentation_rng(3, (0, 0)), transforms.Augment(hflip=1.0))
    assert torch.equal(mirrored, plain.flip(-1))  # the same crop, always mirrored
    # --crop-scale=1: the crop keeps the whole area (a square image: the whole image)
    rng = np.random.default_rng(0)
    assert {transforms.crop_box(60, 60, rng, scale=(1.0, 1.0)) for _ in range(20)} == {(0, 0, 60, 60)}
    areas = [h * w / 3600 for h, w in (transforms.crop_box(60, 60, rng, scale=(0.5, 1.0))[2:] for _ in range(200))]
    assert min(areas) >= 0.45 and max(areas) <= 1.0  # 0.5-1 of the area, up to rounding of the sides
    flips = sum(not torch.equal(transforms.train_image(path, 16, augmentation_rng(3, (0, k)), transforms.Augment(hflip=0.25)),
                                transforms.train_image(path, 16, augmentation_rng(3, (0, k)), transforms.Augment(hflip=0.0)))
                for k in range(200))
    assert 30 <= flips <= 70  # about a quarter of 200


def test_augment_false_trains_on_what_evaluation_sees(tmp_path):
    make_dogcat(tmp_path, per_class=6, test_images=0, extras=False)
    flags = {"train_data_root": str(tmp_path / "train"), "image_size": 16}
    from utils.core.registry import DATASETS

    plain = DATASETS.build("dogcat", config(**flags, augment=False), "train")
    evaluation = ImageFiles(plain.items, 16, augment=False, seed=0)
    assert plain.augment is None and len(plain) > 3
    for index in range(len(plain)):
        assert torch.equal(plain[(0, index)][0], evaluation[index][0])
    tuned = DATASETS.build("dogcat", config(**flags, hflip=0.0, crop_scale=0.5), "train")
    assert tuned.augment == transforms.Augment(hflip=0.0, crop_scale=0.5)
    default = DATASETS.build("dogcat", config(**flags), "train")
    assert default.augment == transforms.Augment(hflip=0.5, crop_scale=0.08)


def test_cifar_padding_and_flip_follow_the_options(tmp_path):
    make_cifar10(tmp_path)
    from utils.core.registry import DATASETS

    base = {"dataset": "cifar10", "train_data_root": str(tmp_path)}
    original = DATASETS.build("cifar10", config(**base, augment=False), "train")
    shifted = DATASETS.build("cifar10", config(**base, hflip=0.0, crop_padding=2), "train")
    assert shifted.augment == transforms.Augment(hflip=0.0, crop_padding=2)
    moved = 0
    for index in range(len(original)):
        image, shift = original[(0, index)][0], shifted[(0, index)][0]
        # the padded crop is the image moved by at most 2 pixels each way, zeros (normalised) around
        candidates = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                      if torch.equal(shift[:, max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)],
                                     image[:, max(-dy, 0):32 + min(-dy, 0), max(-dx, 0):32 + min(-dx, 0)])]
        assert candidates, index
        moved += candidates != [(0, 0)]
    assert moved > len(original) // 2
    # the defaults: CIFAR pads 4 and flips half; MNIST neither
    assert DATASETS.build("cifar10", config(**base), "train").augment == transforms.Augment(hflip=0.5, crop_padding=4)


@pytest.mark.parametrize("flags, message", [
    ({"hflip": "1.5"}, "option --hflip must be <= 1.0; got 1.5"),
    ({"label_smoothing": "1"}, "option --label-smoothing must be below 1"),
    ({"mixup": "-0.2"}, "option --mixup must be >= 0.0; got -0.2"),
    ({"mixup_switch_prob": "2"}, "option --mixup-switch-prob must be <= 1.0"),
    ({"ema": "1"}, "option --ema must be below 1 (a decay"),
    ({"accumulate": "0"}, "option --accumulate must be >= 1; got 0"),
    ({"warmup_epochs": "-1"}, "option --warmup-epochs must be >= 0.0"),
    ({"patience": "-1"}, "option --patience must be >= 0; got -1"),
    ({"monitor": "val_logloss_ema"}, "option --monitor must be a metric of experiment classify: val_logloss, val_loss, "
                                     "val_accuracy; got 'val_logloss_ema' (the _ema metrics need --ema)"),
    ({"experiment": "gan", "accumulate": "2"}, "experiment gan cannot accumulate gradients (its two optimizers step "
                                               "against each other on every batch); drop --accumulate"),
    ({"experiment": "poetry", "ema": "0.9"}, "experiment poetry keeps no weight average (--ema); drop --ema"),
    ({"experiment": "gan", "patience": "3"}, "--patience stops on a validation metric and experiment gan has none"),
])
def test_bad_recipe_options_are_one_line_errors(flags, message):
    with pytest.raises(UsageError) as error:
        config(**flags)
    assert str(error.value).startswith(message), str(error.value)


def test_augmentation_options_the_data_set_does_not_take_fail_before_a_run_exists(tmp_path):
    make_dogcat(tmp_path / "data", per_class=4, test_images=0)
    for extra, line in [({"crop-padding": 4}, "error: --dataset=dogcat does not use --crop-padding (it takes --hflip, "
                                              "--crop-scale); drop --crop-padding"),
                        ({"augment": "false", "hflip": 0.5}, "error: --augment=false trains without augmentation, so "
                                                             "--hflip would do nothing; drop one of them"),
                        ({"crop-scale": 0}, "error: --crop-scale=0 allows crops of no area at all")]:
        result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="wrong", **extra))
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(line), result.stderr
        assert not (tmp_path / "runs" / "wrong").exists()


@pytest.mark.registry
def test_help_lists_every_recipe_option():
    result = run_cli("help")
    assert result.returncode == 0
    for name in ("augment", "hflip", "crop-scale", "crop-padding", "label-smoothing", "mixup", "cutmix",
                 "mixup-switch-prob", "ema", "ema-warmup", "use-ema", "accumulate", "warmup-epochs", "patience"):
        assert re.search(rf"^\s*--{name} ", result.stdout, re.MULTILINE), name
    train_help = run_cli("train", "--help").stdout
    assert "--crop-padding" in train_help and "--mixup" in train_help and "cifar10 4, mnist 0" in train_help
    assert len(train_help.splitlines()) < 60


# -- label smoothing, mixup, CutMix -----------------------------------------------------------
def classify_step(images, labels, **options):
    """(returned scalars, the loss recomputed by hand before the step, the model) of one
    classify step of a linear model, global RNG seeded to 7."""
    from experiments.classify import Classify, mixer

    cfg = types.SimpleNamespace(**{"label_smoothing": 0.0, "mixup": 0.0, "cutmix": 0.0, "mixup_switch_prob": 0.5,
                                   "num_classes": 4, **options})
    experiment = Classify(cfg)
    experiment.mix = mixer(cfg)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(images[0].numel(), 4))
    ctx = context()
    ctx.objects = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(7)
    mixed, targets = experiment.mix(images, labels) if experiment.mix else (images, F.one_hot(labels, 4).float())
    with torch.no_grad():
        log_p = model(mixed).log_softmax(1)
    e = cfg.label_smoothing
    expected = -(((1 - e) * targets + e / 4) * log_p).sum(1).mean()
    torch.manual_seed(7)
    scalars = experiment.step((images, labels), ctx.objects, ctx)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it stepped
    return scalars, expected, targets, log_p


def test_label_smoothing_spreads_e_over_every_class():
    images, labels = torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    scalars, expected, _, log_p = classify_step(images, labels, label_smoothing=0.2)
    assert torch.allclose(scalars["loss"], expected)
    assert scalars["accuracy"] == (log_p.argmax(1) == labels).float().mean()  # no mixing: plain accuracy


def test_mixup_mixes_pairs_and_scores_accuracy_by_the_targets_share():
    images, labels = torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, 3])
    scalars, expected, targets, log_p = classify_step(images, labels, mixup=0.4, label_smoothing=0.1)
    assert torch.allclose(scalars["loss"], expected)
    lam = float(targets[0, 0])
    assert 0 < lam < 1 and torch.allclose(targets[0], torch.tensor([lam, 0, 0, 1 - lam]))  # image 0 with image 3
    assert torch.allclose(targets.sum(1), torch.ones(4))
    predicted = log_p.argmax(1)
    assert torch.isclose(scalars["accuracy"], targets[torch.arange(4), predicted].mean())


def test_cutmix_pastes_a_box_and_mixes_labels_by_its_area():
    from experiments.classify import mixer

    cfg = types.SimpleNamespace(mixup=0.0, cutmix=1.0, mixup_switch_prob=0.5, num_classes=4)
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    mixed, targets = mixer(cfg)(images, labels)
    from_self = (mixed == images).all(1)  # pixels kept from each image (all channels)
    from_other = (mixed == images.roll(1, 0)).all(1)
    assert bool((from_self | from_other).all())
    kept = from_self[0].float().mean()
    assert 0 < kept < 1 and torch.isclose(targets[0, 0], kept) and torch.isclose(targets[0, 3], 1 - kept)
    # both on: --mixup-switch-prob=1 always cuts, 0 always mixes
    for switch, cut in ((1.0, True), (0.0, False)):
        both = types.SimpleNamespace(mixup=0.5, cutmix=1.0, mixup_switch_prob=switch, num_classes=4)
        out, _ = mixer(both)(images, labels)
        assert bool(((out == images).all(1) | (out == images.roll(1, 0)).all(1)).all()) == cut


# -- the engine: EMA, warm-up, accumulation ---------------------------------------------------
def test_ema_follows_decay_with_warm_up_and_copies_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx = context(ema=0.9, ema_warmup=2.0)
    ctx.objects = objects = {"model": model, "optimizer": optimizer}
    add_averages(("model",), objects, ctx)
    assert ctx.averaged_by == {"optimizer": ["model"]} and "model_ema" in objects
    average = None
    for step in range(1, 5):
        ctx.optimize(model(torch.randn(4, 2)).pow(2).sum(), "optimizer")
        weights = model[0].weight.detach().clone()
        decay = 0.9 * (1 - math.exp(-step / 2.0))
        average = weights if average is None else decay * average + (1 - decay) * weights  # the first update copies
        assert torch.allclose(ctx.averaged("model")[0].weight, average, atol=1e-7), step
        assert torch.equal(ctx.averaged("model")[1].running_mean, model[1].running_mean)  # buffers copied
    assert int(objects["model_ema"].n_averaged) == 4 == ctx.state.optimizer_steps["optimizer"]


def test_warm_up_scales_each_step_and_leaves_the_lr_as_it_was():
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data[:] = 0.0
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ctx = context(warmup_epochs=2.0)
    ctx.objects = {"model": model, "optimizer": optimizer}
    for progress, factor in ((0.5, 0.25), (1.0, 0.5), (3.0, 1.0)):
        ctx.progress = progress
        before = model.weight.item()
        ctx.optimize(model(torch.ones(1, 1)).sum() * 0 + model.weight.sum(), "optimizer")  # gradient 1
        assert model.weight.item() == pytest.approx(before - factor)
        assert optimizer.param_groups[0]["lr"] == 1.0  # the policy's lr, untouched


def test_accumulation_groups_weights_and_the_tail():
    # 18 images in batches of 4 (4, 4, 4, 4, 2), groups of 2: the tail group is the last batch alone
    places = [accumulation_place(index, 2, 5, 18, 4, 2 if index == 4 else 4) for index in range(5)]
    assert places == [(True, False, 0.5), (False, True, 0.5), (True, False, 0.5), (False, True, 0.5), (True, True, 1.0)]
    # groups of 3: the tail group is (4, 2): 6 images
    assert accumulation_place(3, 3, 5, 18, 4, 4) == (True, False, 4 / 6)
    assert accumulation_place(4, 3, 5, 18, 4, 2) == (False, True, 2 / 6)
    assert accumulation_place(7, 1, 9, 40, 4, 4) == (True, True, 1.0)


def test_accumulating_batches_skip_ddps_all_reduce(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 1))
        with gradients_kept_local({"model": ddp, "other": 3}):
            assert not ddp.require_backward_grad_sync
        assert ddp.require_backward_grad_sync
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("recipes")
    make_dogcat(tmp_path / "data", per_class=13, test_images=4)  # 18 train images: a tail in every grouping
    return tmp_path


def test_accumulation_equals_one_batch_that_many_times_larger(recipe_data):
    """SGD with momentum (a wrong loss weight would show; Adam would hide it), warm-up and
    cosine: 2 epochs of 4 x 2 accumulated equal 2 epochs of batches of 8."""
    common = {"max-epoch": 2, "optimizer": "sgd", "lr": 0.05, "lr-policy": "cosine", "warmup-epochs": 1.5}
    runs = {}
    for env, extra in (("large", {"batch-size": 8}), ("accumulated", {"batch-size": 4, "accumulate": 2}),
                       ("small", {"batch-size": 4})):
        result = run_cli("train", *tiny_flags(recipe_data / "data", recipe_data, env=env, **common, **extra))
        assert result.returncode == 0, result.stderr
        runs[env] = load(recipe_data / "runs" / env / "last.pth")
    large, accumulated = runs["large"], runs["accumulated"]
    assert large["optimizer_steps"] == accumulated["optimizer_steps"] == {"optimizer": 6}  # 3 per epoch: 8, 8, 2
    assert accumulated["global_step"] == 10
    for key, value in large["model"].items():
        assert torch.allclose(value, accumulated["model"][key], atol=1e-6), key
    # the control: batches of 4 without accumulation train to other weights
    assert not torch.allclose(large["model"]["features.0.weight"], runs["small"]["model"]["features.0.weight"], atol=1e-4)


# -- a run with every recipe: EMA, mixup + CutMix, smoothing, accumulation, warm-up ----------
RECIPE = {"batch-size": 4, "accumulate": 2, "ema": 0.8, "ema-warmup": 2, "label-smoothing": 0.1, "mixup": 0.4,
          "cutmix": 1.0, "warmup-epochs": 0.5, "hflip": 0.3, "crop-scale": 0.5, "max-epoch": 3, "print-freq": 3,
          "monitor": "val_logloss_ema", "lr": 0.01}


@pytest.fixture(scope="module")
def recipe_run(recipe_data):
    result = run_cli("train", *tiny_flags(recipe_data / "data", recipe_data, env="recipe", **RECIPE))
    assert result.returncode == 0, result.stderr
    return recipe_data / "runs" / "recipe"


def test_a_run_with_every_recipe_stopped_mid_group_resumes_bit_for_bit(recipe_data, recipe_run):
    flags = tiny_flags(recipe_data / "data", recipe_data, env="stopped", **RECIPE)
    # SIGINT at step 8, the first batch of epoch 2's second group: the stop waits for its end
    stopped = run_cli("train", *flags, env={"RUNNER_FAULT_AT_STEP": "8:SIGINT"})
    assert stopped.returncode == 130, stopped.stderr
    at_stop = load(recipe_data / "runs" / "stopped" / "last.pth")
    assert (at_stop["epoch"], at_stop["step_in_epoch"], at_stop["optimizer_steps"]) == (1, 4, {"optimizer": 5})
    resumed = run_cli("train", *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load(recipe_run / "last.pth"), load(recipe_data / "runs" / "stopped" / "last.pth")
    for name in ("model", "model_ema"):
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert a["best"] == b["best"] and a["optimizer_steps"] == b["optimizer_steps"] == {"optimizer": 9}
    assert int(a["model_ema"]["n_averaged"]) == 9


def test_ema_is_evaluated_monitored_and_used_by_val_and_test(recipe_data, recipe_run):
    best = load(recipe_run / "best.pth")
    assert best["best"]["metric"] == "val_logloss_ema"
    assert {"val_logloss_ema", "val_accuracy_ema", "val_loss_ema", "val_logloss"} <= set(best["metrics"])
    assert set(best["model_ema"]) == set(best["model"])  # plain weights, ready for inference
    assert any(not torch.equal(best["model_ema"][k], best["model"][k]) for k in best["model"])
    status = json.loads((recipe_run / "status.json").read_text())
    assert status["best"]["metric"] == "val_logloss_ema"
    # val measures the EMA weights by default: its log loss is the epoch's val_logloss_ema
    val = run_cli("val", "--env=recipe", f"--checkpoint-dir={recipe_data / 'runs'}", "--num-workers=0")
    assert val.returncode == 0, val.stderr
    assert "the EMA weights of" in val.stderr
    logloss = float(re.search(r"log loss (\d\.\d+)", val.stdout).group(1))
    assert logloss == pytest.approx(best["metrics"]["val_logloss_ema"], abs=6e-5)

    def test_csv(name, *extra):
        out = recipe_data / f"{name}.csv"
        result = run_cli("test", f"--result-file={out}", f"--test-data-root={recipe_data / 'data' / 'test'}",
                         "--num-workers=0", *extra)
        assert result.returncode == 0, result.stderr
        return list(csv.reader(out.open()))

    where = f"--checkpoint-dir={recipe_data / 'runs'}"
    for weights in ("model_ema", "model"):  # each as a bare weights file
        torch.save(best[weights], recipe_data / f"{weights}.pth")
    bare = ["--image-size=16", "--model=LeNet"]
    assert test_csv("ema", "--env=recipe", where) == test_csv("bare_ema", f"--load-model-path={recipe_data / 'model_ema.pth'}",
                                                              *bare)
    assert test_csv("raw", "--env=recipe", where, "--use-ema=false") == test_csv(
        "bare_raw", f"--load-model-path={recipe_data / 'model.pth'}", "--image-size=16", "--model=LeNet")
    refused = run_cli("test", f"--load-model-path={recipe_data / 'model.pth'}", "--image-size=16", "--model=LeNet",
                      "--use-ema", f"--result-file={recipe_data / 'no.csv'}")
    assert refused.returncode == 2
    assert "holds no moving average of the weights (the run was trained without --ema); drop --use-ema" in refused.stderr
    assert not (recipe_data / "no.csv").exists()


# -- early stopping ---------------------------------------------------------------------------
def test_patience_ends_the_run_finished_and_says_why(recipe_data):
    # lr 0: nothing changes, so val_logloss never improves after epoch 1
    flags = tiny_flags(recipe_data / "data", recipe_data, env="patient", **{"lr": 0, "max-epoch": 6, "patience": 2})
    result = run_cli("train", *flags)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^stopped early at epoch 3: val_logloss has not improved for 2 epochs \(--patience=2; best \d\.\d{4} "
                     r"at epoch 1\)$", result.stdout, re.MULTILINE), result.stdout
    run_dir = recipe_data / "runs" / "patient"
    state = load(run_dir / "last.pth")
    assert state["epoch"] == 3 and state["stopped_early"].startswith("stopped early at epoch 3")
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished" and status["stopped_early"] == state["stopped_early"]
    listing = run_cli("runs", f"--checkpoint-dir={recipe_data / 'runs'}").stdout
    assert re.search(r"patient .*3/6 .*finished \(early stop: val_logloss has not improved for 2 epochs\)", listing), listing
    # not resumable as if interrupted: --resume says so and leaves the run as it is
    again = run_cli("train", *flags, "--resume")
    assert again.returncode == 0, again.stderr
    assert "run patient has finished: stopped early at epoch 3" in again.stdout and "--patience=3" in again.stdout
    assert load(run_dir / "last.pth")["epoch"] == 3
    # a larger patience trains on (and stops again two epochs later)
    more = run_cli("train", *with_flags(flags, "--resume", "--patience=4"))
    assert more.returncode == 0, more.stderr
    assert load(run_dir / "last.pth")["epoch"] == 5


def test_the_readme_recipe_commands_are_valid_configs():
    from conftest import ROOT

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Training recipes"):text.index("## Long runs")]
    block = section.split("```bash")[1].split("```")[0].replace("\\\n", " ")
    commands = [line.split() for line in block.splitlines() if line.startswith("python main.py train")]
    assert len(commands) == 4
    for words in commands:
        flags = dict(word[2:].split("=", 1) for word in words[3:])
        assert config(**flags).experiment == "classify"
