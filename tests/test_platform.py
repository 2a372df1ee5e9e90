"""The engine's services to experiments, computed by hand: the optimisation step, named
random streams, lr policies; the gan's losses and its --d-every; a CPU --amp run."""
import math
import os
import re
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, load, make_dogcat, run_cli, tiny_flags
from experiments.gan import discriminator_loss, generator_loss
from utils.core import seeding
from utils.engine.experiment import Context
from utils.engine.lr_policy import LrPolicy
from utils.engine.precision import Precision
from utils.engine.state import TrainState


def context(**options):
    cfg = types.SimpleNamespace(amp=False, channels_last=False, grad_clip=0.0, seed=3, warmup_epochs=0.0, **options)
    return Context(cfg, torch.device("cpu"), Precision(cfg, torch.device("cpu")), TrainState(), outputs=None)


def test_optimize_zeroes_steps_counts_and_clips_the_true_gradient_norm():
    model = torch.nn.Linear(2, 1, bias=False)
    model.weight.data[:] = torch.tensor([[1.0, 1.0]])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ctx = context()
    ctx.objects = {"model": model, "optimizer": optimizer}
    model.weight.grad = torch.full((1, 2), 100.0)  # a stale gradient: optimize must zero it first
    loss = model(torch.tensor([[3.0, 4.0]])).sum()  # d loss / d w = (3, 4), norm 5
    ctx.optimize(loss, "optimizer", clip=1.0)
    assert torch.allclose(model.weight.data, torch.tensor([[1 - 0.6, 1 - 0.8]]))  # (3, 4) / 5 stepped
    assert ctx.stepped and ctx.state.optimizer_steps == {"optimizer": 1}
    ctx.optimize(model(torch.tensor([[1.0, 0.0]])).sum(), optimizer)  # by object; --grad-clip=0: unclipped
    assert torch.allclose(model.weight.data, torch.tensor([[0.4 - 1.0, 0.2]]))
    assert ctx.state.optimizer_steps == {"optimizer": 2}


def test_named_streams_are_pure_functions_of_the_seed_the_name_and_the_keys():
    ctx = context()
    first = torch.randn(4, generator=ctx.generator("fixed_noise"))
    assert torch.equal(first, torch.randn(4, generator=context().generator("fixed_noise")))
    # the gan's fixed noise is what it was before streams had names: stream 5
    old = torch.Generator().manual_seed(seeding.derive_seed(3, 5))
    assert torch.equal(first, torch.randn(4, generator=old))
    others = [torch.randn(4, generator=ctx.generator(*name)) for name in (("sample_poem",), ("sample_poem", 1))]
    assert not torch.equal(first, others[0]) and not torch.equal(others[0], others[1])
    assert seeding.stream("sample_poem") == seeding.stream("sample_poem") > 2**32  # never a built-in stream


def test_gan_losses_on_hand_computed_logits():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])

    def bce(logit, target):  # -[t log s(x) + (1 - t) log(1 - s(x))]
        s = 1 / (1 + math.exp(-logit))
        return -(target * math.log(s) + (1 - target) * math.log(1 - s))

    expected_d = (bce(2, 1) + bce(0, 1)) / 2 + (bce(-1, 0) + bce(1, 0)) / 2
    assert discriminator_loss("bce", real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert generator_loss("bce", None, fake).item() == pytest.approx((bce(-1, 1) + bce(1, 1)) / 2, rel=1e-6)
    # rahinge: mean r = 1, mean f = 0
    # D: relu(1 - (r - 0)) = (0, 1) -> 0.5; relu(1 + (f - 1)) = (0, 1) -> 0.5
    assert discriminator_loss("rahinge", real, fake).item() == pytest.approx(1.0)
    # G: relu(1 + (r - 0)) = (3, 1) -> 2; relu(1 - (f - 1)) = (3, 1) -> 2
    assert generator_loss("rahinge", real, fake).item() == pytest.approx(4.0)


def test_the_books_lr_rule_decays_when_the_epochs_train_loss_rises():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    cfg = types.SimpleNamespace(lr_policy="book", lr_decay=0.5, lr_step=1, max_epoch=10, monitor="val_loss",
                                experiment="classify")
    policy = LrPolicy(optimizer, cfg, monitor_mode="min")
    lrs = [policy.step(loss, None) for loss in (1.0, 0.8, 0.9, 0.7, 0.75)]
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_plateau_decays_after_lr_step_epochs_without_improvement_of_the_monitor():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    cfg = types.SimpleNamespace(lr_policy="plateau", lr_decay=0.5, lr_step=2, max_epoch=10, monitor="val_accuracy",
                                experiment="classify")
    policy = LrPolicy(optimizer, cfg, monitor_mode="max")
    # --lr-step=2: the 2nd epoch in a row without a better accuracy (epochs 3 and 4) halves
    # the lr; the count starts again after a decay, and epoch 6's gain keeps it
    accuracies = (0.5, 0.6, 0.6, 0.55, 0.6, 0.7)
    lrs = [policy.step(1.0, {"val_accuracy": value, "val_loss": 9.0}) for value in accuracies]
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05])


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from data import face_sample

    tmp_path = tmp_path_factory.mktemp("faces")
    face_sample.generate(tmp_path / "faces", per_class=4)
    return tmp_path


def gan_flags(tmp_path, env, **extra):
    values = {"experiment": "gan", "train-data-root": tmp_path / "faces", "checkpoint-dir": tmp_path / "runs", "env": env,
              "nz": 16, "ngf": 8, "ndf": 8, "batch-size": 4, "max-epoch": 1, "num-workers": 0, "progress": "false",
              "debug-file": "", "print-freq": 100, "g-every": 1, **extra}
    return [f"--{key}={value}" for key, value in values.items()]


def test_d_every_2_trains_the_discriminator_on_every_other_step(faces):
    result = run_cli("train", *gan_flags(faces, "d2", **{"d-every": 2}))
    assert result.returncode == 0, result.stderr
    state = load(faces / "runs" / "d2" / "last.pth")
    assert state["global_step"] == 4 and state["optimizer_steps"] == {"optimizer_d": 2, "optimizer_g": 4}
    assert [entry["step"] for entry in state["optimizer_d"]["state"].values()][0] == 2  # Adam counted 2 steps
    assert [entry["step"] for entry in state["optimizer_g"]["state"].values()][0] == 4


def test_amp_on_a_cpu_trains_in_bfloat16_where_it_can_and_says_so_where_it_cannot(tmp_path):
    from utils.engine.precision import native_bfloat16

    make_dogcat(tmp_path / "data", per_class=6, test_images=2)
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, amp="true"))
    assert result.returncode == 0, result.stderr
    state = load(tmp_path / "runs" / "tiny" / "last.pth")
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())
    assert all(value.dtype in (torch.float32, torch.int64) for value in state["model"].values())  # master weights stay float32
    if native_bfloat16(torch.device("cpu")):
        assert "no native bfloat16" not in result.stderr
    else:
        assert "--amp: this CPU has no native bfloat16" in result.stderr
    forced = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, amp="true", env="forced", **{"amp-dtype": "bfloat16"}))
    assert forced.returncode == 0, forced.stderr  # bfloat16 autocast, emulated or not, trains
    loss = F.cross_entropy(torch.zeros(1, 2), torch.tensor([0])).item()
    assert load(tmp_path / "runs" / "forced" / "best.pth")["metrics"]["val_loss"] < 3 * loss


# -- a new experiment is one file -------------------------------------------------------------
def guide_file(name):
    """The file `name` as docs/extending.md shows it (a ```python block opening with `# name`)."""
    guide = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    return re.search(rf"```python\n(# {re.escape(name)}\n.*?)```", guide, re.S).group(1)


@pytest.mark.slow  # six interpreters of its own on a copy of the repository
def test_a_new_experiment_is_one_dropped_in_file(tmp_path):
    """A copy of the repository plus docs/extending.md's files and no other edit: help lists
    the experiment, its command and its option; it trains on its own monitored metric (with
    its own meter), stops, resumes bit-exactly and runs its own command; the guide's model
    trains on the embedded sample."""
    import subprocess
    import sys

    from test_newcomer import fresh_copy

    repo = fresh_copy(tmp_path / "repo")
    toy = guide_file("experiments/line.py")
    assert len(toy.splitlines()) < 80
    (repo / "experiments" / "line.py").write_text(toy)
    (repo / "models" / "tiny_mlp.py").write_text(guide_file("models/tiny_mlp.py"))

    def cli(*args, **env):
        return subprocess.run([sys.executable, "main.py", *args], cwd=repo, capture_output=True, text=True, timeout=240,
                              env={**os.environ, **env}, stdin=subprocess.DEVNULL)

    shown = cli("help").stdout
    assert "  line:\n    train     fit the line\n    slope     print the fitted slope of a run" in shown
    assert "options of experiment line (with --experiment=line):" in shown and "--true-slope" in shown
    assert "--true-slope" in cli("slope", "--help").stdout
    assert "belongs to experiment line" in cli("train", "--true-slope=2").stderr
    flags = ["--experiment=line", "--true-slope=2", "--num-workers=0", "--progress=false", "--debug-file=", "--print-freq=2"]
    whole = cli("train", *flags, "--env=whole")
    assert whole.returncode == 0, whole.stderr
    assert "best val_error" in whole.stdout and "main.py slope --experiment=line --env=whole" in whole.stdout
    cut = cli("train", *flags, "--env=cut", RUNNER_FAULT_AT_STEP="11:SIGINT")
    assert cut.returncode == 130, cut.stderr
    resumed = cli("train", "--env=cut", "--resume", "--progress=false")
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = load(repo / "checkpoints" / "whole" / "last.pth"), load(repo / "checkpoints" / "cut" / "last.pth")
    assert all(torch.equal(value, actual["model"][key]) for key, value in expected["model"].items())
    assert expected["optimizer_steps"] == actual["optimizer_steps"] == {"optimizer": 32}
    slope = cli("slope", "--experiment=line", "--env=whole")
    assert slope.returncode == 0, slope.stderr
    fitted = float(slope.stdout.split()[1])
    assert abs(fitted - 2.0) < 0.2 and slope.stdout.strip().endswith("(true 2.0)")
    bad = cli("train", "--experiment=line", "--monitor=val_accuracy")
    assert bad.returncode == 2 and "--monitor must be a metric of experiment line: val_error" in bad.stderr
    mlp = cli("train", "--model=TinyMLP", "--image-size=32", "--max-epoch=1", "--env=mlp", "--progress=false")
    assert mlp.returncode == 0, mlp.stderr
    assert load(repo / "checkpoints" / "mlp" / "best.pth")["model"]["layers.1.weight"].shape == (64, 3 * 32 * 32)
