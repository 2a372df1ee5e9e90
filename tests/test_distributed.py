"""Distributed data parallel on torchrun: 2 processes on gloo, CPU.

Each torchrun launch costs seconds (two processes import torch on two cores), so one
uninterrupted 2-process run is shared by the tests that compare against it.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, load, make_dogcat, run_cli, tiny_flags, typed
from data.sampling import EpochSampler
from test_resume import assert_same_training_state
from utils.engine import distributed

# 28 train images, 12 val, 9 test; global batch 2 x 4 = 8: steps of 8, 8, 8, 4 images.
FLAGS = {"max-epoch": 2, "image-size": 16}
STEPS_PER_EPOCH = 4


def torchrun(*args, env=None, nproc=2, launcher=()):
    """`torchrun --standalone --nproc_per_node=NPROC [LAUNCHER] main.py ARGS` (CompletedProcess, text)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *launcher,
         str(ROOT / "main.py"), *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env=full_env, stdin=subprocess.DEVNULL)


def processes_mentioning(text):
    """pids of live processes whose command line contains `text` (orphaned workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found



@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Tiny data and an uninterrupted 2-process run of 2 epochs."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    make_dogcat(tmp_path / "data", per_class=20, test_images=9)
    result = torchrun("train", *tiny_flags(tmp_path / "data", tmp_path, env="reference", **FLAGS))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, result


def flags(tmp_path, env, **extra):
    return tiny_flags(tmp_path / "data", tmp_path, env=env, **{**FLAGS, **extra})


@pytest.mark.slow
def test_two_processes_train_end_to_end_with_one_set_of_run_files(reference):
    tmp_path, result = reference
    run_dir = tmp_path / "runs" / "reference"
    # one run dir, beside the decoded-image cache both ranks read (built by one of them)
    assert sorted(p.name for p in tmp_path.joinpath("runs").iterdir()) == ["image-cache", "reference"]
    [cache] = (tmp_path / "runs" / "image-cache").iterdir()
    assert (cache / "index.json").is_file()
    names = sorted(p.name for p in run_dir.iterdir())
    assert [n for n in names if not n.startswith(("events.", "source"))] == [
        "best.pth", "config.yaml", "data-files.json.gz", "fingerprints", "images", "last.pth", "manifest.json",
        "status.json"]
    assert len([n for n in names if n.startswith("events.")]) == 1  # one TensorBoard writer
    assert len(list((run_dir / "images").iterdir())) == 1  # the input grid, once
    assert "global batch 8 = 2 processes x --batch-size 4" in result.stderr
    assert "distributed: 2 processes on 1 node (gloo on cpu)" in result.stderr
    assert result.stdout.count("trained reference") == 1  # rank 0 reports; rank 1 only warns
    assert "INFO [rank 1]" not in result.stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    state = load(run_dir / "last.pth")
    assert state["epoch"] == 2 and state["global_step"] == 2 * STEPS_PER_EPOCH
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])  # own dropout streams
    assert not any(key.startswith("module.") for key in state["model"])  # unwrapped: loads in one process
    from models import build_model
    from configs import load_config

    model = build_model(load_config({"model": "LeNet", "num_classes": 2, "image_size": 16}))
    model.load_state_dict(load(run_dir / "best.pth")["model"])


@pytest.mark.slow
def test_a_two_process_run_reproduces_under_two_processes_and_one_process_is_told(reference):
    tmp_path, _ = reference
    runs = f"--checkpoint-dir={tmp_path / 'runs'}"
    result = torchrun("reproduce", runs, "--env=reference")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("reproduced: epoch 1 bit-identical (model, optimizer, lr policy: ") == 1  # rank 0 says it
    assert not any(".reproduce-" in p.name for p in (tmp_path / "runs").iterdir())
    alone = run_cli("reproduce", runs, "--env=reference")
    assert alone.returncode == 1, alone.stderr
    assert "note: reference was trained by 2 processes and this is 1; to reproduce it, launch as it was: " \
           "torchrun --nproc_per_node=2 main.py reproduce ..." in alone.stdout
    assert "  world size 2 -> 1" in alone.stdout.splitlines()


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_at_one_step_then_resume_is_bit_exact(reference):
    """SIGTERM to rank 1 alone in step 6 (epoch 2, step 2): both ranks finish that step, one
    last.pth, exit 143, no process left; resumed under 2 processes it ends where the
    uninterrupted run ended, bit for bit. Resumed under 1 process instead, the global batch is
    kept and each epoch trains on every image exactly once (the test hook's sample ids)."""
    tmp_path, _ = reference
    samples = tmp_path / "cut-samples.jsonl"
    cut = torchrun("train", *flags(tmp_path, "cut"), env={"RUNNER_FAULT_AT_STEP": f"{STEPS_PER_EPOCH + 2}:SIGTERM@1",
                                                          "RUNNER_SAMPLE_LOG": str(samples)})
    assert cut.returncode != 0
    # torchrun lists the ranks that exited before it noticed the first: all with 143.
    assert set(re.findall(r"exitcode\s*: (-?\d+)", cut.stderr)) == {"143"}, cut.stderr[-3000:]
    assert "[rank 1] SIGTERM: finishing this step" in cut.stderr
    assert cut.stderr.count("stopped (SIGTERM); saved") == 1
    assert f"Resume: {typed('torchrun')} --nproc_per_node=2 main.py train --env=cut" in cut.stderr  # works as printed
    assert processes_mentioning(str(tmp_path / "runs")) == []
    run_dir = tmp_path / "runs" / "cut"
    assert sorted(p.name for p in run_dir.glob("*.pth")) == ["best.pth", "last.pth"]
    assert not list(run_dir.glob("*.tmp*"))
    stopped = load(run_dir / "last.pth")
    assert (stopped["epoch"], stopped["step_in_epoch"], stopped["samples_in_epoch"]) == (1, 2, 16)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    shutil.copytree(run_dir, tmp_path / "runs" / "cut-one")  # for the resume under one process below
    shutil.copy(samples, tmp_path / "cut-one-samples.jsonl")

    resumed = torchrun("train", f"--checkpoint-dir={tmp_path / 'runs'}", "--env=cut", "--resume",
                       env={"RUNNER_SAMPLE_LOG": str(samples)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training_state(load(tmp_path / "runs" / "reference" / "last.pth"), load(run_dir / "last.pth"))
    for rank in range(2):
        assert torch.equal(load(tmp_path / "runs" / "reference" / "last.pth")["rng_ranks"][rank]["torch"],
                           load(run_dir / "last.pth")["rng_ranks"][rank]["torch"])
    assert_each_epoch_saw_every_image_once(samples, 28, epochs=2)

    # Another number of processes: the global batch of 8 is kept (4 -> 8 images per process),
    # the epoch's image order continues, and it says so.
    single = run_cli("train", f"--checkpoint-dir={tmp_path / 'runs'}", "--env=cut-one", "--resume",
                     env={"RUNNER_SAMPLE_LOG": str(tmp_path / "cut-one-samples.jsonl")})
    assert single.returncode == 0, single.stderr
    assert ("resuming a run launched with 2 processes under 1 process: the global batch stays 8 images: --batch-size "
            "4 -> 8 per process (give --batch-size and --accumulate to choose otherwise); the epoch's image order "
            "continues where it stopped (image 16), and the run is no longer bit-identical") in single.stderr
    finished = load(tmp_path / "runs" / "cut-one" / "last.pth")
    assert (finished["epoch"], finished["global_step"]) == (2, 2 * STEPS_PER_EPOCH)  # the same steps: 8, 4 images
    assert finished["layout"] == {"world": 2, "batch_size": 4, "accumulate": 1}  # a restart under 2 gets 4 again
    steps = assert_each_epoch_saw_every_image_once(tmp_path / "cut-one-samples.jsonl", 28, epochs=2)
    order = EpochSampler(28, 0, shuffle=True, epoch=1).order()
    assert steps[1][-2:] == [(0, order[16:24]), (0, order[24:])]  # one process goes on in the epoch's order


def assert_each_epoch_saw_every_image_once(path, images, epochs):
    """Each epoch's sample ids in the RUNNER_SAMPLE_LOG file `path`, over all ranks and
    restarts, are 0..images-1, each exactly once; returns {epoch: [(rank, ids) per step]}."""
    steps = {}
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        steps.setdefault(entry["epoch"], []).append((entry["rank"], entry["indices"]))
    assert sorted(steps) == list(range(epochs))
    for epoch, taken in steps.items():
        ids = [index for _, indices in taken for index in indices]
        assert sorted(ids) == list(range(images)), (epoch, ids)
    return steps


@pytest.mark.slow
def test_val_and_test_under_two_processes_equal_one_process(reference, forked_cli):
    """The metrics the 2-process run computed on its shares equal a single process's `val`
    of the same checkpoint; `test` under 2 processes writes the single process's csv."""
    tmp_path, _ = reference
    run = [f"--checkpoint-dir={tmp_path / 'runs'}", "--env=reference"]
    best = load(tmp_path / "runs" / "reference" / "best.pth")
    val = forked_cli("val", *run, "--num-workers=0")
    assert val.returncode == 0, val.stderr
    assert f"val: 12 images  accuracy {best['metrics']['val_accuracy']:.4f}  log loss {best['metrics']['val_logloss']:.4f}" \
        in val.stdout

    one = forked_cli("test", *run, f"--result-file={tmp_path / 'one.csv'}")
    two = torchrun("test", *run, f"--result-file={tmp_path / 'two.csv'}")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote 9 rows") == 1
    rows = [list(csv.reader(open(tmp_path / name))) for name in ("one.csv", "two.csv")]
    assert [row[0] for row in rows[1]] == ["id"] + [str(i) for i in range(1, 10)]  # complete, sorted
    for a, b in zip(rows[0][1:], rows[1][1:]):
        assert a[0] == b[0] and float(a[1]) == pytest.approx(float(b[1]), abs=1e-6)


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_without_saving_it(reference):
    tmp_path, _ = reference
    result = torchrun("train", *flags(tmp_path, "nan"), env={"RUNNER_FAULT_AT_STEP": f"{STEPS_PER_EPOCH + 1}:nan@1"})
    assert set(re.findall(r"exitcode\s*: (-?\d+)", result.stderr)) == {"1"}, result.stderr[-3000:]
    assert result.stderr.count("loss is nan at epoch 2, step 1") == 1  # rank 0 says it for both
    assert load(tmp_path / "runs" / "nan" / "last.pth")["epoch"] == 1  # the last good state, untouched
    assert processes_mentioning(str(tmp_path / "runs" / "nan")) == []


@pytest.mark.slow
def test_gan_trains_under_two_processes(tmp_path):
    result = torchrun("train", "--experiment=gan", f"--checkpoint-dir={tmp_path}", "--env=gan", "--max-epoch=1",
                      "--batch-size=16", "--ngf=8", "--ndf=8", "--num-workers=0", "--progress=false", "--debug-file=",
                      "--print-freq=100")
    assert result.returncode == 0, result.stderr[-3000:]
    state = load(tmp_path / "gan" / "last.pth")
    assert state["global_step"] == 25  # 800 faces in global batches of 32
    assert not any(key.startswith("module.") for key in state["netd"])
    assert sorted(p.name for p in (tmp_path / "gan" / "images").iterdir()) == [
        "generated_step0000000.png", "generated_step0000025.png"]


# -- without torchrun ---------------------------------------------------------------------
@pytest.mark.parametrize("size,batch,world,start", [(28, 4, 2, 0), (29, 4, 3, 5), (7, 2, 4, 0), (30, 3, 2, 12)])
def test_ranks_split_each_global_batch_of_one_epoch_order(size, batch, world, start):
    order = EpochSampler(size, 3, shuffle=True, epoch=2).order()
    shares = [[index for _, index in EpochSampler(size, 3, True, 2, start, rank, world, batch)] for rank in range(world)]
    steps = -(-len(shares[0]) // batch)
    assert all(-(-len(share) // batch) == steps for share in shares)  # every rank runs the same steps
    taken = [index for step in range(steps) for share in shares for index in share[step * batch:(step + 1) * batch]]
    left_out = (size - start) % (batch * world)
    kept = size - (left_out if left_out < world else 0)
    assert taken == order[start:kept]  # the global order, each image once, fewer than `world` left out


def test_resume_under_another_world_size_continues_the_same_global_order():
    before = [EpochSampler(30, 1, True, 0, 0, rank, 3, 2) for rank in range(3)]
    consumed = 2 * 3 * 2  # two steps of 3 ranks x 2 images
    after = [index for _, index in EpochSampler(30, 1, True, 0, consumed, 0, 1, 2)]
    assert after == EpochSampler(30, 1, True, 0).order()[consumed:]
    assert sorted(index for sampler in before for _, index in list(sampler)[:4]) == \
        sorted(EpochSampler(30, 1, True, 0).order()[:consumed])


@pytest.mark.parametrize("size,world", [(12, 2), (9, 2), (5, 3), (2, 3)])
def test_evaluation_shares_cover_the_split_once_without_padding(size, world):
    shares = [[index for _, index in EpochSampler(size, 0, False, rank=rank, world=world, batch_size=4)]
              for rank in range(world)]
    assert [index for share in shares for index in share] == list(range(size))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_agrees_with_itself():
    values, size, stop, save = distributed.agree_step({"loss": torch.tensor(0.25)}, 4, None)
    assert (values, size, stop, save) == ({"loss": 0.25}, 4, None, False)
    assert distributed.sum_values([1, 2.5]) == [1, 2.5]
    assert distributed.gather_objects("x") == ["x"]


@pytest.mark.parametrize("joined", [False, True])
def test_a_process_ends_with_its_code_and_nothing_it_wrote_lost(tmp_path, joined):
    """end_process skips the interpreter's teardown after a process group (gloo could abort
    there, exit -6, after a finished run); what a normal exit does first still happens:
    a non-daemon writer thread finishes, atexit handlers run, buffered output reaches the pipe."""
    script = f"""
import atexit, sys, threading, time
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from utils.engine import distributed
distributed._joined = {joined}
def write():
    time.sleep(0.5)
    Path({str(tmp_path / "thread.txt")!r}).write_text("whole")
threading.Thread(target=write).start()
atexit.register(lambda: Path({str(tmp_path / "atexit.txt")!r}).write_text("ran"))
sys.stdout.write("buffered, no newline")
distributed.end_process(3)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout == "buffered, no newline"
    assert (tmp_path / "thread.txt").read_text() == "whole"
    assert (tmp_path / "atexit.txt").read_text() == "ran"


def test_sync_bn_on_cpu_under_torchrun_is_refused_before_joining(tmp_path, forked_cli):
    """A launch with --sync-bn on CPU fails in one line before it waits for any peer."""
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    result = forked_cli("train", f"--checkpoint-dir={tmp_path}", "--sync-bn", "--device=cpu", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("error: --sync-bn needs CUDA: SyncBatchNorm does not run on CPU; "
                                                      "drop --sync-bn (each process then normalises its own batch)")
    assert not any(tmp_path.iterdir())


def test_requeue_signal_saves_and_exits_with_its_code_then_resumes(tmp_path, forked_cli):
    make_dogcat(tmp_path / "data", per_class=6, test_images=2)
    run = tiny_flags(tmp_path / "data", tmp_path, env="requeue", **{"max-epoch": 2, "requeue-signal": "USR1"})
    stopped = forked_cli("train", *run, env={"RUNNER_FAULT_AT_STEP": "3:SIGUSR1"})
    assert stopped.returncode == 138, stopped.stderr  # 128 + SIGUSR1, as 143 is 128 + SIGTERM
    assert "stopped (SIGUSR1); saved" in stopped.stderr
    assert load(tmp_path / "runs" / "requeue" / "last.pth")["step_in_epoch"] == 1  # 2 steps per epoch, stopped in step 3
    resumed = forked_cli("train", f"--checkpoint-dir={tmp_path / 'runs'}", "--env=requeue", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert load(tmp_path / "runs" / "requeue" / "last.pth")["epoch"] == 2


def test_processes_started_together_generate_the_demo_sample_once(tmp_path):
    """torchrun starts every process on the default data at once: they take turns on a lock,
    and the sample they use is the one a single process generates, complete."""
    script = (f"import logging, sys; sys.path.insert(0, {str(ROOT)!r}); logging.basicConfig(level=logging.INFO); "
              f"from data import sample; sample.ensure(sys.argv[1])")
    together = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "both")], stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    logs = [process.communicate(timeout=120)[1] for process in together]
    assert [process.returncode for process in together] == [0, 0]
    assert sum(log.count("generating the smoke-demo sample") for log in logs) == 1, logs
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "one")], check=True, timeout=120)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 2 * 150 + 60 + 1
    for name in files:
        assert (tmp_path / "both" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


@pytest.mark.slow
def test_training_recipes_under_two_processes(reference):
    """Accumulation (no_sync on the accumulating batches), EMA, mixup + CutMix, label
    smoothing, warm-up and early stopping under 2 processes: 28 images in global batches of
    2 x 2, groups of 2 (4, 4 | 4, 4 | 4, 4 | 4): 4 optimizer steps an epoch."""
    tmp_path, _ = reference
    # torchrun takes --monitor=... for an abbreviation of its own --monitor-interval: from a file
    (tmp_path / "recipes.yaml").write_text("monitor: val_loss_ema\n")
    result = torchrun("train", *flags(tmp_path, "recipes", **{
        "batch-size": 2, "accumulate": 2, "ema": 0.5, "mixup": 0.2, "cutmix": 1.0, "label-smoothing": 0.1,
        "warmup-epochs": 0.5, "patience": 1, "lr": 0, "max-epoch": 4, "config": tmp_path / "recipes.yaml"}))
    assert result.returncode == 0, result.stderr[-3000:]
    state = load(tmp_path / "runs" / "recipes" / "last.pth")
    # lr 0: val_loss_ema never improves after epoch 1, so --patience=1 ends the run after epoch 2 on both ranks
    assert result.stdout.count("stopped early at epoch 2: val_loss_ema has not improved for 1 epoch") == 1
    assert state["epoch"] == 2 and state["global_step"] == 14 and state["optimizer_steps"] == {"optimizer": 8}
    assert int(state["model_ema"]["n_averaged"]) == 8 and state["world_size"] == 2


@pytest.mark.slow
def test_a_sweep_under_two_processes_trains_the_trials_rank_0_chose(reference):
    """Rank 0 asks the study and holds the lease; both ranks train each trial it chose (the
    global batch is 2 x --batch-size), and the pruner's verdict reaches both ranks."""
    tmp_path, _ = reference
    (tmp_path / "space.yaml").write_text("pruner: none\nparams:\n  lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n")
    args = [arg for arg in flags(tmp_path, "unused", **{"max-epoch": 1}) if not arg.startswith(("--env=", "--lr="))]
    result = torchrun("sweep", "--study=ddp", "--trials=2", f"--search-space={tmp_path / 'space.yaml'}", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("sweep ddp: 2 of 2 trials finished; this worker ran 2 trials") == 1  # rank 0 says it
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "ddp" / "optuna.journal")))
    trials = optuna.load_study(study_name="ddp", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for trial in trials:
        state = load(tmp_path / "runs" / "ddp" / f"trial-{trial.number}" / "last.pth")
        assert state["world_size"] == 2 and state["global_step"] == STEPS_PER_EPOCH
        assert state["config"]["lr"] == trial.params["lr"] and trial.value == state["best"]["value"]


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # two torchrun agents
def test_two_nodes_without_a_shared_checkpoint_dir_stop_with_one_line_on_rank_0(tmp_path):
    """Two "nodes" on this machine, each in a working directory of its own with a relative
    --checkpoint-dir: rank 1 cannot see what rank 0 writes, as on nodes without a shared
    file system. Rank 0 says so in one line; no gloo traceback; no run folder is left."""
    make_dogcat(tmp_path / "data", per_class=6, test_images=2)
    port = free_port()
    nodes = []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
                   "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}", str(ROOT / "main.py"),
                   "train", *tiny_flags(tmp_path / "data", tmp_path, env="apart", **{"checkpoint-dir": "runs"})]
        nodes.append(subprocess.Popen(command, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL,
                                      env=dict(os.environ, PYTHONUNBUFFERED="1", RUNNER_SHARED_WAIT="2")))
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [1, 1], outputs
    ours = [line for line in outputs[0][1].splitlines() if line.startswith("error: ")]
    assert ours == [f"error: the checkpoint dir must be shared by every node: rank 1 on {os.uname().nodename} cannot see "
                    f"runs/apart/config.yaml as rank 0 wrote it; put --checkpoint-dir on a file system every node mounts "
                    f"at the same path (NFS, Lustre, ...)"], outputs[0][1]
    assert "[rank 1]" not in outputs[1][1] and "ProcessGroupGloo" not in outputs[0][1] + outputs[1][1]
    assert not (tmp_path / "node0" / "runs" / "apart").exists()  # a failed start leaves no run folder


@pytest.mark.slow
def test_a_worker_killed_under_max_restarts_is_restarted_and_the_run_ends_bit_identical(reference):
    """kill -9 of rank 1 before step 6 (epoch 2, step 2) of a run saving every step: torchrun
    restarts the group, every rank resumes from step 5's last.pth, and the run ends where the
    uninterrupted one did, bit for bit; rank 0 said in one line why it stopped, and the
    restart is recorded."""
    tmp_path, _ = reference
    result = torchrun("train", *flags(tmp_path, "restarted", resume="auto", **{"save-every": 1}),
                      env={"RUNNER_FAULT_AT_STEP": f"{STEPS_PER_EPOCH + 2}:SIGKILL@1"}, launcher=["--max-restarts=1"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming " in result.stderr and "last.pth in epoch 2 of 2: steps 1-1 were done, it goes on with step 2" \
        in result.stderr
    assert "Traceback" not in result.stderr and "GLHF" not in result.stderr  # gloo's words reach no one
    run_dir = tmp_path / "runs" / "restarted"
    assert_same_training_state(load(tmp_path / "runs" / "reference" / "last.pth"), load(run_dir / "last.pth"))
    record = json.loads((run_dir / "status.json").read_text())
    assert record["status"] == "finished"
    [restart] = record["restarts"]
    assert restart["torchrun_restart"] == "1 of 1" and restart["from"] == "epoch 2, step 2" and restart["world"] == 2
    assert restart["after"].startswith(("lost a peer: ", "killed: "))
    table = run_cli("runs", f"--checkpoint-dir={tmp_path / 'runs'}")
    assert re.search(r"^restarted .* 1 \((lost a peer|killed)\)$", table.stdout, re.M), table.stdout

    again = torchrun("train", *flags(tmp_path, "restarted", resume="auto"), launcher=["--max-restarts=1"])
    assert again.returncode == 0 and again.stdout.count("already finished: run restarted, 2 of --max-epoch=2") == 1


@pytest.mark.slow
def test_a_worker_killed_before_the_first_checkpoint_is_a_restart_recorded_every_time(tmp_path):
    """kill -9 of rank 1 at step 2, before any checkpoint: rank 0 keeps the new run's folder
    (torchrun restarts the group), so the restart goes on from config.yaml and is recorded,
    whether rank 0 said it lost its peer or was killed by the agent first."""
    make_dogcat(tmp_path / "data", per_class=8, test_images=2)
    result = torchrun("train", *flags(tmp_path, "early", resume="auto"), env={"RUNNER_FAULT_AT_STEP": "2:SIGKILL@1"},
                      launcher=["--max-restarts=1"])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "runs" / "early" / "status.json").read_text())
    assert record["status"] == "finished"
    [restart] = record["restarts"]
    assert restart["from"] == "epoch 1, its start" and restart["world"] == 2 and restart["torchrun_restart"] == "1 of 1"
    assert restart["after"].startswith(("lost a peer: ", "killed: "))


@pytest.mark.slow  # two torchrun agents and a rendezvous after the loss
def test_a_node_of_two_lost_mid_epoch_the_other_goes_on_alone_and_each_image_is_seen_once(tmp_path):
    """Two "nodes" of one process each on 127.0.0.1 (c10d, --nnodes=1:2, --max-restarts=1).
    Node 1 is lost (its agent and its process killed) before step 6; node 0's process says so
    in one line and exits, its agent gathers the nodes left, and the run goes on at world size
    1 from the step 5 checkpoint with the global batch kept: each epoch trains on every image
    exactly once, and the steps are those of the run that never lost a node."""
    make_dogcat(tmp_path / "data", per_class=14, test_images=2)  # 20 train images: steps of 8, 8, 4
    port, samples = free_port(), tmp_path / "samples.jsonl"
    nodes = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1:2", "--nproc-per-node=1",
                   "--max-restarts=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lost",
                   f"--rdzv-conf=is_host={int(node == 0)},last_call_timeout=2,join_timeout=60",
                   str(ROOT / "main.py"), "train",
                   *tiny_flags(tmp_path / "data", tmp_path, env="lost", resume="auto", **{"save-every": 1, **FLAGS})]
        nodes.append(subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, env=dict(
                                          os.environ, PYTHONUNBUFFERED="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
                                          RUNNER_SAMPLE_LOG=str(samples), RUNNER_FAULT_AT_STEP="6:kill-node@1")))
    started = time.monotonic()
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert nodes[1].returncode == -9
    assert nodes[0].returncode == 0, outputs[0][1][-3000:]
    assert time.monotonic() - started < 120  # the loss is noticed at once (the connection closes), not after a timeout
    log = outputs[0][1]
    assert "error: lost another process of the group (" in log and "Traceback" not in log
    assert ("resuming a run launched with 2 processes under 1 process: the global batch stays 8 images: --batch-size "
            "4 -> 8 per process") in log
    run_dir = tmp_path / "runs" / "lost"
    state = load(run_dir / "last.pth")
    assert (state["epoch"], state["global_step"], state["config"]["batch_size"]) == (2, 6, 8)
    [restart] = json.loads((run_dir / "status.json").read_text())["restarts"]
    assert restart["world"] == "2 -> 1" and restart["from"] == "epoch 2, step 3"
    assert_each_epoch_saw_every_image_once(samples, 20, epochs=2)
    assert processes_mentioning(str(tmp_path / "runs")) == []
