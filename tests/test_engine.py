"""The engine's checkpoint policy under kill -9, lr policies, unwrapped state dicts, val loss."""
import types

import pytest
import torch

import configs
from conftest import load, make_dogcat, run_cli, tiny_flags
from utils.engine import checkpoint, state
from utils.engine.lr_policy import LrPolicy

EPOCHS = 2
FLAGS = {"max-epoch": EPOCHS, "batch-size": 4, "lr": 0.01}



@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("engine")
    make_dogcat(tmp_path / "data", per_class=12, test_images=3)
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="reference", **FLAGS))
    assert result.returncode == 0, result.stderr
    # Checkpoint writes of the run: a last.pth per epoch and a best.pth per improving epoch.
    writes = EPOCHS + result.stderr.count("| best")
    run_dir = tmp_path / "runs" / "reference"
    return tmp_path, load(run_dir / "best.pth"), writes


def test_resuming_a_finished_run_removes_the_temp_files_a_kill_at_its_last_write_left(reference):
    """A kill at a run's last checkpoint write can land while the main thread writes the
    manifest: the run is finished, and `--resume` (which trains nothing) still removes the
    temp files, and only them."""
    tmp_path = reference[0]
    done = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="finished", **FLAGS))
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "finished"
    before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}
    (run_dir / ".manifest.json.k1ll3d.tmp").write_text('{"format": 1, "run": "fini')
    (run_dir / ".last.pth.x9.tmp").write_bytes(b"PK\x03\x04 half")
    again = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="finished", **FLAGS), "--resume")
    assert again.returncode == 0, again.stderr
    assert "has finished" in again.stdout + again.stderr
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} == before


@pytest.mark.parametrize("fault", ["kill", "kill-before-rename"])
def test_best_is_never_older_than_the_runs_best_after_a_kill_at_any_write(reference, fault):
    tmp_path, reference_best, writes = reference
    # Every epoch improves on this data, so best.pth and last.pth alternate and a kill lands
    # between them in both orders. A kill before a rename is tested at one write (the second).
    assert writes == 2 * EPOCHS
    for write in range(1, writes + 1) if fault == "kill" else [2]:
        env = f"{fault}-{write}"
        run_dir = tmp_path / "runs" / env
        killed = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env=env, **FLAGS),
                         env={"RUNNER_FAULT_AT_SAVE": f"{write}:{fault}"})
        assert killed.returncode == -9, killed.stderr  # SIGKILL, as kill -9
        if (run_dir / "last.pth").exists():
            last = load(run_dir / "last.pth")
            # The best epoch the run knows of is on disk as best.pth, or newer (and then redone).
            assert load(run_dir / "best.pth")["epoch"] >= last["best"]["epoch"], write
        if fault == "kill-before-rename":
            assert list(run_dir.glob(".*.tmp")), "the kill should leave the temp file behind"
        # What the stop message tells a user; before the first last.pth it restarts the run.
        finished = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env=env, **FLAGS), "--resume")
        assert finished.returncode == 0, finished.stderr
        assert not list(run_dir.glob(".*.tmp")), "leftover temp files are removed when a run starts or resumes"
        best, last = load(run_dir / "best.pth"), load(run_dir / "last.pth")
        assert best["epoch"] == reference_best["epoch"] == last["best"]["epoch"], write
        for key, value in reference_best["model"].items():
            assert torch.equal(best["model"][key], value), (write, key)


def test_an_lr_set_by_hand_is_kept_by_every_policy():
    for policy_name, expected in (("book", 1e-4), ("step", 1e-4 * 0.5), ("constant", 1e-4), ("cosine", None)):
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        cfg = types.SimpleNamespace(lr_policy=policy_name, lr_decay=0.5, lr_step=1, max_epoch=10, monitor="val_loss",
                                    experiment="classify")
        policy = LrPolicy(optimizer, cfg, monitor_mode="min")
        optimizer.step()
        policy.step(1.0, {"val_loss": 1.0})
        optimizer.param_groups[0]["lr"] = 1e-4  # typed at the ipdb prompt
        lr = policy.step(0.5, {"val_loss": 0.5})  # train loss fell: the book rule keeps the lr
        if expected is None:  # cosine anneals from the lr it finds, never jumps back to 0.1
            assert 0 < lr < 1e-4
        else:
            assert lr == pytest.approx(expected), policy_name


def test_cosine_stretches_smoothly_when_max_epoch_grows_on_resume():
    def policy(max_epoch):
        optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        cfg = types.SimpleNamespace(lr_policy="cosine", lr_decay=0.5, lr_step=1, max_epoch=max_epoch, monitor="val_loss",
                                    experiment="classify")
        return optimizer, LrPolicy(optimizer, cfg)

    optimizer, first = policy(4)
    for _ in range(2):
        optimizer.step()
        first.step(1.0, None)
    resumed_optimizer, resumed = policy(8)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(first.state_dict())
    lrs = [first.lr]
    for _ in range(6):
        resumed_optimizer.step()
        lrs.append(resumed.step(1.0, None))
    assert lrs[0] == pytest.approx(0.05)  # half-way through the first 4-epoch schedule
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(0, abs=1e-12)
    assert lrs[2] > 0.001  # epoch 4 is no longer the end of the schedule


def test_plateau_needs_a_metric():
    from utils.core.errors import UsageError

    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    cfg = types.SimpleNamespace(lr_policy="plateau", lr_decay=0.5, lr_step=2, max_epoch=10, monitor="val_loss",
                                experiment="gan")
    with pytest.raises(UsageError, match=r"--lr-policy=plateau needs a validation metric; experiment gan has none"):
        LrPolicy(optimizer, cfg)


def test_saved_state_dicts_have_no_compile_or_ddp_prefix(tmp_path):
    import torch.distributed as dist

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    compiled = torch.compile(model)  # compiles lazily: wrapping alone needs no compiler
    assert list(compiled.state_dict())[0].startswith("_orig_mod.")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(compiled)
        assert list(wrapped.state_dict())[0].startswith("module._orig_mod.")
        saved = state.checkpoint_state({"model": wrapped}, state.TrainState(), configs.load_config({}))
        assert list(saved["model"]) == ["0.weight", "0.bias"]
        assert checkpoint.unwrap(wrapped) is model
    finally:
        dist.destroy_process_group()


def test_val_loss_is_the_criterion_and_logloss_is_kaggles_clipped_metric():
    from experiments.classify import evaluate

    class Confident(torch.nn.Module):
        def forward(self, images):  # every image: "cat" with logit margin 50
            return torch.tensor([[50.0, 0.0]]).expand(len(images), 2)

    cfg = types.SimpleNamespace(num_classes=2, channels_last=False, amp=False)
    loader = [(torch.zeros(2, 3, 4, 4), torch.tensor([1, 1]))]  # both are dogs: confidently wrong
    metrics = evaluate(Confident(), loader, cfg, torch.device("cpu"))
    assert metrics["val_loss"] == pytest.approx(50.0)  # cross-entropy of the logits, unclipped
    assert metrics["val_logloss"] == pytest.approx(34.5388, abs=1e-4)  # -log(1e-15): Kaggle's clip
    assert metrics["val_accuracy"] == 0.0
