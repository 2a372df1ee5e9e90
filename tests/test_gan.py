"""The gan experiment end to end on tiny generated faces: train, bit-exact resume, generate."""
import math

import pytest
import torch
from PIL import Image

from conftest import load, run_cli, typed
from data import face_sample
from models.dcgan import NetD, NetG
from utils.core.errors import UsageError

# 16 faces, batch 4: 4 steps per epoch, 12 in all; print_freq 3 puts a grid mid-epoch.
FLAGS = {"experiment": "gan", "image-size": 32, "ngf": 8, "ndf": 8, "nz": 16, "batch-size": 4, "max-epoch": 3,
         "print-freq": 3, "num-workers": 0, "progress": "false", "debug-file": ""}



def gan_flags(tmp_path, env, **extra):
    values = {**FLAGS, "train-data-root": tmp_path / "faces", "checkpoint-dir": tmp_path / "runs", "env": env, **extra}
    return [f"--{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Tiny faces (4 hair colours x 4, in class subfolders) and one uninterrupted run."""
    tmp_path = tmp_path_factory.mktemp("gan")
    face_sample.generate(tmp_path / "faces", per_class=4)
    result = run_cli("train", *gan_flags(tmp_path, "reference"))
    assert result.returncode == 0, result.stderr
    return tmp_path, result


def test_train_writes_both_nets_both_optimizers_the_fixed_noise_and_grids(reference):
    tmp_path, result = reference
    run_dir = tmp_path / "runs" / "reference"
    state = load(run_dir / "last.pth")
    for key in ("netg", "netd", "optimizer_g", "optimizer_d", "lr_policy_g", "lr_policy_d", "fixed_noise", "rng", "config"):
        assert key in state, key
    assert (state["epoch"], state["global_step"], state["experiment"]) == (3, 12, "gan")
    assert state["fixed_noise"].shape == (64, 16, 1, 1)
    assert not (run_dir / "best.pth").exists()  # no validation metric, so no best
    grids = sorted(p.name for p in (run_dir / "images").glob("*.png"))
    # step 0, every 3 steps, and each epoch end (4, 8, 12)
    assert grids == [f"generated_step{step:07d}.png" for step in (0, 3, 4, 6, 8, 9, 12)]
    assert Image.open(run_dir / "images" / grids[-1]).size == (8 * 34 + 2, 8 * 34 + 2)  # 8 x 8 grid of 32 px
    assert "trained reference: 3 epochs; checkpoints in" in result.stdout


def test_a_gan_run_reproduces_bit_for_bit(reference):
    tmp_path, _ = reference
    result = run_cli("reproduce", f"--checkpoint-dir={tmp_path / 'runs'}", "--env=reference")
    assert result.returncode == 0, result.stderr
    assert "reproduced: epoch 1 bit-identical (netg, netd, optimizer g, optimizer d, lr policy g, lr policy d, fixed noise: " \
           in result.stdout, result.stdout


def test_tensorboard_has_both_losses_and_d_outputs(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(reference[0] / "runs" / "reference"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_d", "train/loss_g", "train/d_real", "train/d_fake", "train/lr/g", "train/lr/d"} <= tags
    assert [e.step for e in events.Scalars("train/loss_g")] == [3, 6, 9, 12]
    assert "generated" in events.Tags()["images"]


def test_sigint_mid_epoch_then_resume_equals_uninterrupted(reference):
    tmp_path, _ = reference
    stopped = run_cli("train", *gan_flags(tmp_path, "sigint"), env={"RUNNER_FAULT_AT_STEP": "6:SIGINT"})
    assert stopped.returncode == 130, stopped.stderr
    state = load(tmp_path / "runs" / "sigint" / "last.pth")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 6)
    resumed = run_cli("train", "--env=sigint", f"--checkpoint-dir={tmp_path / 'runs'}", "--resume", "--progress=false")
    assert resumed.returncode == 0, resumed.stderr  # no --experiment: the checkpoint says gan
    expected, actual = load(tmp_path / "runs" / "reference" / "last.pth"), load(tmp_path / "runs" / "sigint" / "last.pth")
    for net in ("netg", "netd"):
        for key, value in expected[net].items():
            assert torch.equal(value, actual[net][key]), (net, key)
    for optimizer in ("optimizer_g", "optimizer_d"):
        for index, param_state in expected[optimizer]["state"].items():
            for name, value in param_state.items():
                assert torch.equal(value, actual[optimizer]["state"][index][name]), (optimizer, index, name)
    assert torch.equal(expected["fixed_noise"], actual["fixed_noise"])
    assert torch.equal(expected["rng"]["torch"], actual["rng"]["torch"])


def test_generate_writes_a_grid_of_gen_num_images_and_is_deterministic(reference, tmp_path):
    run_tmp, _ = reference
    common = ["--experiment=gan", f"--checkpoint-dir={run_tmp / 'runs'}", "--env=reference", "--gen-num=6",
              "--gen-search-num=20"]
    first = run_cli("generate", *common, f"--gen-img={tmp_path / 'a.png'}")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"wrote 6 images (the best-scored of 20) to {tmp_path / 'a.png'}"
    assert Image.open(tmp_path / "a.png").size == (3 * 34 + 2, 2 * 34 + 2)  # 6 images: 3 per row, 2 rows
    again = run_cli("test", *common, f"--gen-img={tmp_path / 'b.png'}")  # `test` is the card's name for it
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    other_seed = run_cli("generate", *common, "--seed=1", f"--gen-img={tmp_path / 'c.png'}")
    assert other_seed.returncode == 0, other_seed.stderr
    assert (tmp_path / "c.png").read_bytes() != (tmp_path / "a.png").read_bytes()
    # without --gen-img the grid goes into the run's folder
    default = run_cli("generate", *common)
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == f"wrote 6 images (the best-scored of 20) to {run_tmp / 'runs' / 'reference' / 'result.png'}"
    assert (run_tmp / "runs" / "reference" / "result.png").read_bytes() == (tmp_path / "a.png").read_bytes()


def test_generate_of_a_gan_run_needs_no_experiment_and_a_new_env_names_the_commands(reference, tmp_path):
    """--env of an existing run picks its experiment (its config.yaml says gan); without a
    run to read, the default experiment answers and names its commands."""
    result = run_cli("generate", f"--checkpoint-dir={reference[0] / 'runs'}", "--env=reference",
                     f"--gen-img={tmp_path / 'faces.png'}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "faces.png").stat().st_size > 0
    unknown = run_cli("generate", f"--checkpoint-dir={reference[0] / 'runs'}", "--env=nothing-here")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == ("error: experiment classify has no command 'generate'; its commands: train, val, "
                                      "test (pick another with --experiment; `python main.py help` lists them)"
                                      ).replace("python main.py", typed())


def test_val_of_a_gan_run_names_every_command_of_the_gan_aliases_too(reference):
    result = run_cli("val", "--experiment=classify", f"--checkpoint-dir={reference[0] / 'runs'}", "--env=reference")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {reference[0] / 'runs' / 'reference' / 'last.pth'} was trained by experiment 'gan'; add --experiment=gan "
        f"(its commands: train, generate, test (= generate))")


def test_generate_refuses_keeping_more_than_it_draws(reference, tmp_path):
    result = run_cli("generate", "--experiment=gan", f"--checkpoint-dir={reference[0] / 'runs'}", "--env=reference",
                     "--gen-num=8", "--gen-search-num=4", f"--gen-img={tmp_path / 'x.png'}")
    assert result.returncode == 2
    assert "error: --gen-num=8 is more than --gen-search-num=4; draw at least as many as you keep" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_rahinge_loss_trains_and_images_can_be_flat(tmp_path):
    flat = tmp_path / "faces"
    face_sample.generate(tmp_path / "nested", per_class=2)
    flat.mkdir()
    for index, path in enumerate(sorted((tmp_path / "nested").rglob("*.png"))):
        path.rename(flat / f"{index}.png")  # no class subfolders: the book's data/faces/*.jpg
    result = run_cli("train", *gan_flags(tmp_path, "rahinge", **{"gan-loss": "rahinge", "max-epoch": 1, "g-every": 2}))
    assert result.returncode == 0, result.stderr
    assert "train split: 8 images" in result.stderr
    state = load(tmp_path / "runs" / "rahinge" / "last.pth")
    assert state["global_step"] == 2 and state["config"]["gan_loss"] == "rahinge"


def test_unsupported_image_size_is_a_usage_error_before_the_run_dir(tmp_path):
    face_sample.generate(tmp_path / "faces", per_class=1)
    result = run_cli("train", *gan_flags(tmp_path, "bad", **{"image-size": 100}))
    assert result.returncode == 2
    assert "error: --image-size=100 does not fit the DCGAN nets: use 4 * 2^n * 2 or 4 * 2^n * 3" in result.stderr
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.parametrize("size", [32, 48, 64, 96])
def test_nets_fit_every_supported_size(size):
    netg, netd = NetG(nz=10, ngf=4, image_size=size), NetD(ndf=4, image_size=size)
    images = netg(torch.randn(2, 10, 1, 1))
    assert images.shape == (2, 3, size, size)
    assert images.abs().max() <= 1  # Tanh
    assert netd(images).shape == (2,)


def test_the_books_96_pixel_generator_has_its_widths():
    netg = NetG(nz=100, ngf=64, image_size=96)
    widths = [layer.out_channels for layer in netg.main if isinstance(layer, torch.nn.ConvTranspose2d)]
    assert widths == [512, 256, 128, 64, 3]
    last = [layer for layer in netg.main if isinstance(layer, torch.nn.ConvTranspose2d)][-1]
    assert (last.kernel_size, last.stride, last.padding) == ((5, 5), (3, 3), (1, 1))
    with pytest.raises(UsageError, match=r"--image-size=50 does not fit"):
        NetG(image_size=50)
    assert math.isclose(sum(p.numel() for p in netg.parameters()) / 1e6, 3.58, abs_tol=0.01)


def test_ema_of_the_generator_draws_the_grids_and_generate(reference, tmp_path):
    run_tmp, _ = reference
    result = run_cli("train", *gan_flags(run_tmp, "ema", **{"ema": 0.9, "ema-warmup": 0, "max-epoch": 1}))
    assert result.returncode == 0, result.stderr
    run_dir = run_tmp / "runs" / "ema"
    state = load(run_dir / "last.pth")
    assert int(state["netg_ema"]["n_averaged"]) == state["optimizer_steps"]["optimizer_g"] == 4
    assert "netd_ema" not in state  # the generator's average only
    grids = [p.name.split("_step")[0] for p in (run_dir / "images").iterdir()]
    assert set(grids) == {"generated", "generated_ema"} and grids.count("generated") == grids.count("generated_ema")
    common = ["--experiment=gan", f"--checkpoint-dir={run_tmp / 'runs'}", "--env=ema", "--gen-num=4", "--gen-search-num=8"]
    drawn = {}
    for name, extra in (("ema", []), ("raw", ["--use-ema=false"])):
        done = run_cli("generate", *common, f"--gen-img={tmp_path / name}.png", *extra)
        assert done.returncode == 0, done.stderr
        drawn[name] = (tmp_path / f"{name}.png").read_bytes()
    assert drawn["ema"] != drawn["raw"]
    # the default draws with the average: the same picture as a checkpoint whose generator is it
    doctored = dict(state, netg={key[len("module."):]: value for key, value in state["netg_ema"].items()
                                 if key.startswith("module.")})
    del doctored["netg_ema"]
    torch.save(doctored, tmp_path / "doctored.pth")
    same = run_cli("generate", "--experiment=gan", f"--load-model-path={tmp_path / 'doctored.pth'}", "--gen-num=4",
                   "--gen-search-num=8", f"--gen-img={tmp_path / 'doctored.png'}")
    assert same.returncode == 0, same.stderr
    assert (tmp_path / "doctored.png").read_bytes() == drawn["ema"]
