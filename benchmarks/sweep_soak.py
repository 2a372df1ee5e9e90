"""Soak test of a sweep under kill -9: two workers share a study while one of them is killed
with SIGKILL again and again, half the time by a timer at a random moment, half the time from
inside a journal append (RUNNER_FAULT_AT_APPEND=N:kill: half a record on disk, as a kill in
the middle of a write leaves it). Then one more worker finishes the study, and the script
checks what the sweep promises:

- the study is readable, and holds exactly --trials finished trials (no failed, none twice);
- every trial's last.pth equals, tensor for tensor, the same trial trained without
  interruption (`train --config=<trial>/config.yaml` in a run dir of its own).

It prints how many kills landed inside an append, how many cut records the next appends
removed, how many trials were taken over, and the verdicts.

    .venv/bin/python benchmarks/sweep_soak.py                     # 20 kills, 64 trials of 10 epochs
    .venv/bin/python benchmarks/sweep_soak.py --kills=6 --trials=16 --seed=1

A worker killed while it holds the journal's or the study's lock leaves a lock that the next
worker breaks at once (utils/sweep/lock.py: the link names its dead holder). A kill that
finds the study finished hits no working worker; the first line counts those that did.
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from utils.sweep.journal import Journal  # noqa: E402

SPACE = "pruner: none\nparams:\n  lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n  batch_size: [4, 8]\n"


def make_data(root, per_class):
    """Tiny Kaggle-layout images whose class shows in their brightness."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    for index in range(per_class):
        for kind, level in (("cat", 50), ("dog", 200)):
            pixels = np.clip(level + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "train" / f"{kind}.{index}.jpg")


def optuna_alone(folder):
    """The control: Optuna's own JournalFileBackend after one cut record and two more appends
    (what a worker killed inside an append leaves, then the next worker's tell and ask).
    Returns what a reader of the study gets then."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    path = folder / "control.journal"
    study = optuna.create_study(study_name="c", storage=JournalStorage(JournalFileBackend(str(path))))
    trial = study.ask()
    with open(path, "ab") as journal:
        journal.write(b'{"op_code":6,"worker_id":"killed","trial_id":0,"sta')  # half a record
    study.tell(trial, 1.0)  # the next append lands behind it: a reader loses this tell, silently
    try:
        study.ask()  # one more, and from now on every reader fails, this one first
        optuna.load_study(study_name="c", storage=JournalStorage(JournalFileBackend(str(path))))
        return "readable"
    except Exception as error:  # noqa: BLE001 - whatever a reader gets is the result
        return f"unreadable ({type(error).__name__}: {str(error)[:60]})"


def worker(args, log_dir, env=None):
    """A sweep worker in a process of its own, its stderr in a file of `log_dir` (a pipe could
    fill up and stall it)."""
    log_dir.mkdir(exist_ok=True)
    with open(log_dir / f"{len(list(log_dir.iterdir()))}.txt", "w") as log:
        return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, **(env or {})))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    # enough work that the killed worker always finds a trial to take: the steady one would
    # otherwise finish the study alone while the kills go on
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--images", type=int, default=300, help="in the train folder (70%% train, 30%% validation)")
    parser.add_argument("--seed", type=int, default=None, help="of the kill schedule (default: random, printed)")
    options = parser.parse_args()
    seed = options.seed if options.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        make_data(folder / "data", per_class=options.images // 2)
        (folder / "space.yaml").write_text(SPACE)
        study_dir = folder / "runs" / "soak"
        sweep = ["sweep", "--study=soak", f"--trials={options.trials}", f"--search-space={folder / 'space.yaml'}",
                 f"--checkpoint-dir={folder / 'runs'}", f"--train-data-root={folder / 'data' / 'train'}",
                 "--model=LeNet", "--image-size=16", f"--max-epoch={options.epochs}", "--num-workers=0",
                 "--progress=false", "--debug-file=", "--threads=1"]
        logs = folder / "logs"
        in_append, in_flight, steady = 0, 0, worker(sweep, logs)
        for kill in range(options.kills):
            if steady.poll() is not None:  # the steady worker found nothing to start: start it again
                steady = worker(sweep, logs)
            if kill % 2:
                victim = worker(sweep, logs, env={"RUNNER_FAULT_AT_APPEND": f"{rng.randint(1, 12)}:kill"})
                try:
                    victim.wait(timeout=180)  # it kills itself inside its N-th append (or finishes first)
                except subprocess.TimeoutExpired:
                    victim.kill()
                in_append += victim.returncode == -signal.SIGKILL
            else:
                victim = worker(sweep, logs)
                time.sleep(rng.uniform(3.0, 10.0))  # past the imports (about 3 s), into the study's work
                in_flight += victim.poll() is None
                victim.kill()  # SIGKILL, wherever it is
                victim.wait()
        steady.wait()
        last = subprocess.run([sys.executable, str(ROOT / "main.py"), *sweep], cwd=ROOT, capture_output=True, text=True)
        if last.returncode != 0:
            sys.exit(f"the last worker failed:\n{last.stderr[-3000:]}")
        soak_seconds = time.perf_counter() - started

        import optuna
        from optuna.storages.journal import JournalStorage

        study = optuna.load_study(study_name="soak", storage=JournalStorage(Journal(study_dir / "optuna.journal")))
        states = [trial.state.name for trial in study.trials]
        equal = 0
        for number in range(len(states)):
            trial_dir = study_dir / f"trial-{number}"
            reference = subprocess.run([sys.executable, str(ROOT / "main.py"), "train",
                                        f"--config={trial_dir / 'config.yaml'}", f"--checkpoint-dir={folder / 'ref'}",
                                        f"--env=trial-{number}"], cwd=ROOT, capture_output=True, text=True)
            if reference.returncode != 0:
                sys.exit(f"the reference of trial {number} failed:\n{reference.stderr[-3000:]}")
            mine = torch.load(trial_dir / "last.pth", weights_only=True)
            theirs = torch.load(folder / "ref" / f"trial-{number}" / "last.pth", weights_only=True)
            same = all(torch.equal(mine["model"][key], value) for key, value in theirs["model"].items())
            same &= all(torch.equal(mine["optimizer"]["state"][index][name], tensor)
                        for index, values in theirs["optimizer"]["state"].items() for name, tensor in values.items()
                        if torch.is_tensor(tensor))
            equal += same
        text = "\n".join([last.stderr] + [log.read_text() for log in logs.iterdir()])
        control = optuna_alone(folder)
        cut = text.count("ended in a cut record")
        takeovers = text.count(", resuming it (")

    complete = states.count("COMPLETE")
    print(f"{in_append + in_flight} of {options.kills} SIGKILLs hit a working worker: {in_append} inside a journal "
          f"append, {in_flight} at a random moment; {options.trials} trials of {options.epochs} epochs, kill schedule "
          f"seed {seed}: {soak_seconds:.0f} s")
    print(f"  cut records removed before an append: {cut}; trials taken over from a killed worker: {takeovers}")
    print(f"  study readable: yes; trials: {complete} complete of {len(states)} "
          f"({'exactly --trials' if complete == len(states) == options.trials else 'NOT exactly --trials'})")
    print(f"  last.pth equal to the trial trained without interruption: {equal} of {len(states)}")
    print(f"  control, Optuna's own journal backend after one cut record and two appends: {control}")
    if not (complete == len(states) == options.trials == equal):
        sys.exit(1)


if __name__ == "__main__":
    main()
