"""The decoded-image cache (--cache, `cache`): what it stores, that it is built once and
atomically, invalidated by a changed image, survives kill -9 and a full disk, and keeps
resume bit-exact."""
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, load, run_cli, small_disk, tiny_flags, with_flags
from data import cache_build, image_cache
from data.cache_build import INDEX, PIXELS, PROGRESS
from data.readable import open_image
from data.transforms import eval_image, eval_pixels, short_side_pixels
from test_resume import assert_same_training_state

SIZE = 24  # --image-size: the cache keeps a short side of round(24 / 0.875) = 27 px


def photo(rng, width, height, level):
    """A JPEG-like image with structure (a gradient and noise), larger than the cached side."""
    y, x = np.mgrid[0:height, 0:width]
    base = (level + 50 * np.sin(x / 15.0) + 30 * np.cos(y / 11.0))[..., None] + rng.normal(0, 4, (height, width, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def make_photos(root, per_class=8, seed=0):
    """Kaggle layout with images of several sizes and aspects (60x45 .. 80x100)."""
    rng = np.random.default_rng(seed)
    train = Path(root) / "train"
    train.mkdir(parents=True)
    sizes = [(60, 45), (80, 100), (64, 64), (75, 50)]
    for index in range(per_class):
        for kind, level in (("cat", 70), ("dog", 170)):
            photo(rng, *sizes[index % 4], level).save(train / f"{kind}.{index}.jpg", quality=90)
    return train


@pytest.fixture
def photos(tmp_path):
    return make_photos(tmp_path / "data")


def flags(train, tmp_path, **extra):
    return tiny_flags(train.parent, tmp_path, **{"image-size": SIZE, "max-epoch": 2, **extra})


def cache_dirs(folder):
    return sorted(path for path in Path(folder).glob("*px-*") if path.is_dir())


def test_the_cached_images_are_a_direct_decode_and_resize_and_the_eval_crop_is_close(photos, tmp_path):
    done = run_cli("cache", f"--train-data-root={photos}", f"--image-size={SIZE}", f"--checkpoint-dir={tmp_path / 'runs'}")
    assert done.returncode == 0, done.stderr
    assert "16 images, short side 27 px" in done.stdout
    [directory] = cache_dirs(tmp_path / "runs" / "image-cache")
    cache = image_cache.Cache(directory)
    for path in sorted(photos.glob("*.jpg")):
        cache.add_paths([path], [path], [path.name])
        with open_image(path) as image:
            direct = short_side_pixels(image, 27)
        assert min(direct.shape[:2]) == 27
        assert torch.equal(cache.pixels(path), direct), path.name
        # what a model sees at evaluation: the centre crop of the cached pixels vs of the file
        difference = (eval_pixels(cache.pixels(path), SIZE).float() - eval_image(path, SIZE).float()).abs()
        assert difference.mean() < 4.0 and difference.max() <= 16, path.name  # a shift of under a pixel
    index = json.loads((directory / INDEX).read_text())
    assert index["format"] == cache_build.FORMAT and index["root"] == str(photos)
    assert index["bytes"] == (directory / PIXELS).stat().st_size and not (directory / PROGRESS).exists()


def test_train_builds_once_then_every_run_and_fold_reads_it_and_val_sees_what_train_saw(photos, tmp_path):
    first = run_cli("train", *flags(photos, tmp_path, env="a"))
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("image cache: building") == 1 and "image cache: reading" in first.stderr
    group = run_cli("train", *flags(photos, tmp_path, env="g", folds=2))
    assert group.returncode == 0, group.stderr
    assert "image cache: building" not in group.stderr and group.stderr.count("image cache: reading") == 1
    assert len(cache_dirs(tmp_path / "runs" / "image-cache")) == 1
    trained = [line for line in first.stderr.splitlines() if "epoch 2/2: train" in line][0]
    val = run_cli("val", "--env=a", f"--checkpoint-dir={tmp_path / 'runs'}", "--num-workers=0")
    assert val.returncode == 0, val.stderr
    assert f"logloss {float(val.stdout.split('log loss ')[1].split()[0]):.4f}" in trained  # the same pixels
    manifest = json.loads((tmp_path / "runs" / "a" / "manifest.json").read_text())
    assert manifest["environments"][0]["image_cache"] == "crop short side 27 px, format 1"
    assert load(tmp_path / "runs" / "a" / "last.pth")["info"]["image_cache"] == "crop short side 27 px, format 1"
    again = run_cli("reproduce", "--env=a", f"--checkpoint-dir={tmp_path / 'runs'}", "--num-workers=0")
    assert again.returncode == 0 and "reproduced" in again.stdout, again.stdout + again.stderr  # with the cache, bit for bit
    one_pass = run_cli("train", *flags(photos, tmp_path / "other", env="b", **{"max-epoch": 1}))
    assert "image cache: off (one pass over the data" in one_pass.stderr
    assert not (tmp_path / "other" / "runs" / "image-cache").exists()


def test_resume_with_the_cache_is_bit_exact_and_an_uncached_run_resumes_uncached(photos, tmp_path):
    base = flags(photos, tmp_path, **{"batch-size": 2})
    reference = run_cli("train", *with_flags(base, "--env=whole"))
    assert reference.returncode == 0, reference.stderr
    stopped = run_cli("train", *with_flags(base, "--env=cut"), env={"RUNNER_FAULT_AT_STEP": "10:SIGKILL"})
    assert stopped.returncode == -9
    resumed = run_cli("train", *with_flags(base, "--env=cut", "--resume=auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert "image cache: reading" in resumed.stderr
    assert_same_training_state(load(tmp_path / "runs" / "cut" / "last.pth"), load(tmp_path / "runs" / "whole" / "last.pth"))
    # a run that trained without the cache (auto: one pass) goes on without it when it trains longer
    other = flags(photos, tmp_path / "other", **{"batch-size": 2})
    plain = run_cli("train", *with_flags(other, "--env=plain", "--max-epoch=1"))
    assert plain.returncode == 0 and "image cache: off (one pass" in plain.stderr
    again = run_cli("train", *with_flags(other, "--env=plain", "--resume=auto", "--max-epoch=2"))
    assert again.returncode == 0, again.stderr
    assert "image cache: off, as the run trained so far" in again.stderr and "image cache: reading" not in again.stderr
    uncached = run_cli("train", *with_flags(base, "--env=uncached", "--cache=off"))
    assert uncached.returncode == 0, uncached.stderr
    assert_same_training_state(load(tmp_path / "other" / "runs" / "plain" / "last.pth"),
                               load(tmp_path / "runs" / "uncached" / "last.pth"))
    cached, decoded = load(tmp_path / "runs" / "whole" / "last.pth"), load(tmp_path / "runs" / "uncached" / "last.pth")
    assert any(not torch.equal(cached["model"][k], decoded["model"][k]) for k in cached["model"])  # it is used


def test_a_build_killed_half_way_goes_on_at_the_next_start_and_ends_complete(photos, tmp_path):
    command = ["cache", f"--train-data-root={photos}", f"--image-size={SIZE}", f"--checkpoint-dir={tmp_path / 'runs'}",
               "--num-workers=1"]
    killed = run_cli(*command, env={"RUNNER_FAULT_IN_CACHE": "2:kill"})
    assert killed.returncode == -9
    [directory] = cache_dirs(tmp_path / "runs" / "image-cache")
    assert not (directory / INDEX).exists()  # nothing looks complete
    progress = json.loads((directory / PROGRESS).read_text())
    assert 0 < progress["done"] < 16
    listed = run_cli("cache", "--list", f"--checkpoint-dir={tmp_path / 'runs'}")
    assert "unfinished" in listed.stdout
    again = run_cli(*command)
    assert again.returncode == 0, again.stderr
    assert f"image cache: going on with {directory}" in again.stderr
    cache = image_cache.Cache(directory)
    for path in sorted(photos.glob("*.jpg")):
        cache.add_paths([path], [path], [path.name])
        with open_image(path) as image:
            assert torch.equal(cache.pixels(path), short_side_pixels(image, 27)), path.name


def test_two_processes_starting_together_build_it_once(photos, tmp_path):
    command = [sys.executable, str(ROOT / "main.py"), "cache", f"--train-data-root={photos}", f"--image-size={SIZE}",
               f"--checkpoint-dir={tmp_path / 'runs'}", "--num-workers=1"]
    # each progress record waits 1 s: the second process finds the first building
    env = dict(__import__("os").environ, RUNNER_FAULT_IN_CACHE="1:slow,2:slow,3:slow")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    time.sleep(0.3)
    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], outputs
    logs = "".join(err for _, err in outputs)
    assert logs.count("image cache: building") == 1, logs
    assert "image cache: waiting for pid" in logs
    assert len(cache_dirs(tmp_path / "runs" / "image-cache")) == 1


def test_a_changed_image_is_named_and_makes_a_new_cache_that_replaces_the_old(photos, tmp_path):
    command = ["cache", f"--train-data-root={photos}", f"--image-size={SIZE}", f"--checkpoint-dir={tmp_path / 'runs'}"]
    assert run_cli(*command).returncode == 0
    [old] = cache_dirs(tmp_path / "runs" / "image-cache")
    photo(np.random.default_rng(9), 60, 45, 20).save(photos / "cat.3.jpg")
    (photos / "dog.0.jpg").unlink()
    changed = run_cli(*command)
    assert changed.returncode == 0, changed.stderr
    assert "changed since" in changed.stderr and "1 changed (cat.3.jpg), 1 removed (dog.0.jpg)" in changed.stderr
    [new] = cache_dirs(tmp_path / "runs" / "image-cache")
    assert new != old and not old.exists()
    cache = image_cache.Cache(new)
    path = photos / "cat.3.jpg"
    cache.add_paths([path], [path], [path.name])
    with open_image(path) as image:
        assert torch.equal(cache.pixels(path), short_side_pixels(image, 27))


def test_a_full_disk_while_building_is_one_line_and_leaves_nothing_that_looks_valid(photos, tmp_path):
    with small_disk(tmp_path / "disk", 4 << 20) as disk:
        explicit = run_cli("train", *flags(photos, tmp_path, env="full", cache=disk / "caches", **{"num-workers": 0}),
                           env={"RUNNER_FAULT_IN_CACHE": "1:fill"})
        assert explicit.returncode == 1, explicit.stderr
        error = explicit.stderr.strip().splitlines()[-1]
        assert error.startswith("error: --cache: cannot write ") and "no space left on device" in error
        assert "nothing of the cache is kept" in error
        [directory] = cache_dirs(disk / "caches")
        assert not (directory / INDEX).exists() and not (directory / PIXELS).exists()
        assert not (tmp_path / "runs" / "full").exists()  # the run did not start


def test_auto_without_room_says_so_and_trains_on_the_decoded_files(photos, tmp_path, caplog):
    with small_disk(tmp_path / "disk", 64 << 10) as disk:
        cfg = type("Cfg", (), {"cache": "auto", "checkpoint_dir": str(disk), "max_epoch": 3, "folds": 0,
                               "num_workers": 0})()
        items = [(path, 0) for path in sorted(photos.glob("*.jpg"))]
        with caplog.at_level(logging.INFO), image_cache.for_training():
            assert image_cache.attach(cfg, items, 64) is None  # 16 images at short side 73: about 250 kB
        said = [record.getMessage() for record in caplog.records if "image cache" in record.getMessage()]
        assert any("image cache: off (the cache of 16 images needs" in line and "auto uses at most half" in line
                   for line in said), said
        assert not any((directory / INDEX).exists() or (directory / PIXELS).exists()
                       for directory in cache_dirs(disk / "image-cache"))


@pytest.mark.parametrize("value, error", [
    ("of", "--cache='of' is neither auto nor off, and no folder of that name exists; did you mean off?"),
    ("true", "option --cache takes auto, off or a folder; got 'true'"),
    ("", "option --cache takes auto, off or a folder; got ''"),
])
def test_bad_values_of_cache_are_one_line(photos, tmp_path, value, error):
    done = run_cli("train", *flags(photos, tmp_path, cache=value))
    assert done.returncode == 2 and done.stderr.strip() == f"error: {error}" + (
        " (for a new folder here write --cache=./of)" if value == "of" else "")


def test_cache_of_a_file_or_of_array_data_and_list_with_clear_are_refused(photos, tmp_path):
    (tmp_path / "afile").write_text("x")
    done = run_cli("train", *flags(photos, tmp_path, cache=tmp_path / "afile"))
    assert done.returncode == 2 and "is a file; give a folder for the image caches" in done.stderr
    both = run_cli("cache", "--list", "--clear")
    assert both.returncode == 2 and "give --list or --clear, not both" in both.stderr
    off = run_cli("cache", "--cache=off")
    assert off.returncode == 2 and "cache --cache=off has no caches" in off.stderr


def test_list_shows_sizes_and_clear_removes_every_cache(photos, tmp_path):
    runs = f"--checkpoint-dir={tmp_path / 'runs'}"
    assert run_cli("cache", f"--train-data-root={photos}", "--image-size=16", runs).returncode == 0
    assert run_cli("cache", f"--train-data-root={photos}", "--image-size=32", runs).returncode == 0
    listed = run_cli("cache", "--list", runs)
    assert listed.returncode == 0, listed.stderr
    assert "18 px" in listed.stdout and "37 px" in listed.stdout and listed.stdout.count("ready") == 2
    assert "2 caches" in listed.stdout
    cleared = run_cli("cache", "--clear", runs)
    assert cleared.returncode == 0 and "removed 2 caches" in cleared.stdout
    assert cache_dirs(tmp_path / "runs" / "image-cache") == []
    assert "no image caches in" in run_cli("cache", "--list", runs).stdout


def test_the_gan_faces_read_from_the_cache_are_the_decoded_faces(photos, tmp_path):
    from data.faces import cached_gan_tensor, to_gan_tensor
    from data.readable import load_rgb

    items = [(path, 0) for path in sorted(photos.glob("*.jpg"))]
    cfg = type("Cfg", (), {"cache": str(tmp_path / "caches"), "checkpoint_dir": str(tmp_path), "max_epoch": 1,
                           "folds": 0, "num_workers": 0})()
    cache = image_cache.attach(cfg, items, 16, kind="gan")
    for path, _ in items:
        cached, direct = cached_gan_tensor(cache.pixels(path), 16), to_gan_tensor(load_rgb(path), 16)
        assert cached.shape == direct.shape == (3, 16, 16)
        assert (cached - direct).abs().mean() < 0.03, path.name  # PIL's and torch's bilinear filters


def test_a_cache_difference_is_named_between_manifests():
    from utils.engine.manifest_diff import setting_lines

    lines = setting_lines({"image_cache": "off"}, {"image_cache": "crop short side 256 px, format 1"})
    assert lines == ["image cache off -> crop short side 256 px, format 1"]


@pytest.mark.parametrize("damage", ["truncate pixels", "index offsets", "index junk"])
def test_a_damaged_cache_is_one_line_naming_it_and_the_fix(photos, tmp_path, damage):
    runs = tmp_path / "runs"
    assert run_cli("cache", f"--train-data-root={photos}", f"--image-size={SIZE}", f"--checkpoint-dir={runs}").returncode == 0
    [directory] = cache_dirs(runs / "image-cache")
    if damage == "truncate pixels":
        with open(directory / PIXELS, "r+b") as handle:
            handle.truncate(100)
    elif damage == "index offsets":
        index = json.loads((directory / INDEX).read_text())
        index["images"][3][2] = 10 ** 12
        (directory / INDEX).write_text(json.dumps(index))
    else:
        (directory / INDEX).write_text('{"format": 1, "images": [1, 2]}')
    done = run_cli("train", *flags(photos, tmp_path, env="d"))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()[-1:]) == 1
    assert f"the image cache {'index ' if damage == 'index junk' else ''}{directory}" in done.stderr
    assert "python main.py cache --clear" in done.stderr.strip().splitlines()[-1] and "Traceback" not in done.stderr
    assert not (runs / "d").exists()
    assert run_cli("cache", "--clear", f"--checkpoint-dir={runs}").returncode == 0
    assert run_cli("train", *flags(photos, tmp_path, env="d")).returncode == 0  # built again
