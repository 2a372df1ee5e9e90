"""A study on PostgreSQL against the journal file, and the failure drills, on one machine.

A throw-away PostgreSQL server (tests/postgres_server.py: initdb in a temporary folder, a free
port on 127.0.0.1; removed at the end) and generated Kaggle-layout images. It prints:

1. wall time of a 2-worker, --trials sweep with the journal file (both workers in one
   --checkpoint-dir) and with PostgreSQL (each worker its own --checkpoint-dir: two machines
   that share only the database);
2. the storage's own cost per trial, measured in one process without training: what a worker
   does around a trial (study lock, count, ask, draw the parameters, lease, one report and
   pruner question per epoch, tell, release), N trials in a row, with each storage;
3. drills, each timed: kill -9 of a worker mid-trial and a worker of the other "machine"
   taking the trial over; a frozen worker (SIGSTOP) losing its trial after --stale-after;
   `pg_ctl restart` under a running worker; the server stopped past the worker's patience
   (--stale-after / 2) and the same command resuming once it is back.

    .venv/bin/python benchmarks/sweep_postgres.py                 # 8 trials of 3 epochs, 400 images
    .venv/bin/python benchmarks/sweep_postgres.py --trials=16 --epochs=5
"""
import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from postgres_server import Server, find_programs  # noqa: E402

from benchmarks.sweep_soak import make_data  # noqa: E402

SPACE = "pruner: none\nparams:\n  lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n"


def sweep_args(folder, study, trials, epochs, storage="", machine="runs", **extra):
    flags = {"study": study, "trials": trials, "search-space": folder / "space.yaml",
             "train-data-root": folder / "data" / "train", "checkpoint-dir": folder / machine, "model": "LeNet",
             "image-size": 32, "num-workers": 0, "max-epoch": epochs, "progress": "false", "debug-file": "",
             "threads": 1, "batch-size": 16, **({"storage": storage} if storage else {}), **extra}
    return ["sweep", *(f"--{key}={value}" for key, value in flags.items())]


def worker(args, log):
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def wait_for(path, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not Path(path).exists():
        time.sleep(0.02)
    return Path(path).exists()


def line_time(log, pattern, timeout=300):
    """When (time.time()) a line matching `pattern` appears in the log file (its HH:MM:SS stamp
    is too coarse: polled instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, Path(log).read_text()):
            return time.time()
        time.sleep(0.02)
    return None


def two_workers(folder, study, trials, epochs, url=""):
    machines = ("a", "b") if url else ("runs", "runs")
    started = time.perf_counter()
    workers = [worker(sweep_args(folder, study, trials, epochs, url, machine), folder / f"{study}-{n}.log")
               for n, machine in enumerate(machines)]
    codes = [w.wait() for w in workers]
    return time.perf_counter() - started, codes


def storage_cost(folder, url, trials, epochs):
    """(seconds to open the study, its schema included for a new database; seconds per trial
    of the study operations alone, see the module)."""
    import optuna

    from utils.sweep import coordination
    from utils.sweep.study import storage_of

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study_dir = folder / ("cost-db" if url else "cost-journal")
    study_dir.mkdir()
    opening = time.perf_counter()
    storage = storage_of(study_dir, url, 10)
    study = optuna.create_study(study_name=study_dir.name, storage=storage)
    coordinated = coordination.of(study_dir, url, 300, study._storage)
    started = time.perf_counter()
    opened = started - opening
    for number in range(trials):
        with coordinated.lock():
            running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
            coordinated.holders(running)
            trial = study.ask()
            trial.suggest_float("lr", 1e-3, 3e-2, log=True)
            lease = coordinated.claim(trial._trial_id, trial.number)
        for epoch in range(epochs):
            lease.check()
            trial.report(1.0 / (epoch + 1 + number), epoch)
            trial.should_prune()
        study.tell(trial, 0.5)
        lease.release()
    return opened, (time.perf_counter() - started) / trials


RACER = """import sys, time, optuna
sys.path.insert(0, {root!r})
from utils.sweep import postgres
optuna.logging.set_verbosity(optuna.logging.ERROR)
time.sleep(max(0, {at!r} - 0.05 - time.time()))
while time.time() < {at!r}:  # the last moment spun, so that every racer starts within a millisecond
    pass
storage = postgres.storage({url!r}, 10) if {ours!r} else {url!r}
try:
    optuna.create_study(study_name="race", storage=storage, load_if_exists=True)
    print("ok")
except Exception as error:
    print(type(error).__name__)
"""


def schema_race(server, racers=8, rounds=3):
    """How many of `racers` first workers, started at one moment on an empty database, get the
    study (`rounds` times): with Optuna's RDBStorage alone, and through the runner (its schema
    made under a lock)."""
    said = {}
    for ours in (False, True):
        results = []
        for round_ in range(rounds):
            url = server.create_database(f"race{int(ours)}{round_}")
            code = RACER.format(root=str(ROOT), at=time.time() + 4, url=url, ours=ours)
            started = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True) for _ in range(racers)]
            results += [process.communicate()[0].strip() for process in started]
        failures = sorted(set(result for result in results if result != "ok"))
        said["runner" if ours else "Optuna alone"] = f"{results.count('ok')} of {len(results)} got the study" + (
            f" (the others: {', '.join(failures)})" if failures else "")
    return said


def drills(folder, server, epochs):
    said = {}
    url = server.create_database("drills")
    # kill -9 mid-trial; the other machine's worker takes it over at once (the pid is gone from this host)
    log_a, log_b = folder / "kill-a.log", folder / "kill-b.log"
    a = worker(sweep_args(folder, "kill", 1, epochs * 4, url, "a"), log_a)
    wait_for(folder / "a" / "kill" / "trial-0" / "last.pth")
    a.send_signal(signal.SIGKILL)
    a.wait()
    killed = time.time()
    b = worker(sweep_args(folder, "kill", 1, epochs * 4, url, "b"), log_b)
    taken = line_time(log_b, r"trial 0, taking it over")
    code = b.wait()
    said["kill -9, taken over by another machine's worker"] = (
        f"taken over {taken - killed:.1f} s after the kill (a new worker's start-up included); finished exit {code}; "
        f"{'started again from scratch' if 'starts again from its first epoch' in log_b.read_text() else '?'}")

    # a frozen worker: its lease goes stale after --stale-after (10 s) in the server's clock
    log_a, log_b = folder / "freeze-a.log", folder / "freeze-b.log"
    a = worker(sweep_args(folder, "freeze", 1, epochs * 4, url, "a", **{"stale-after": 10}), log_a)
    wait_for(folder / "a" / "freeze" / "trial-0" / "last.pth")
    a.send_signal(signal.SIGSTOP)
    frozen = time.time()
    taken = None
    while taken is None and time.time() - frozen < 120:  # a worker every second, as a scheduler might start them
        b = worker(sweep_args(folder, "freeze", 1, epochs * 4, url, "b", **{"stale-after": 10}), log_b)
        while taken is None and b.poll() is None:
            taken = line_time(log_b, r"trial 0, taking it over", timeout=0.02)
        taken = taken or line_time(log_b, r"trial 0, taking it over", timeout=0.02)
        b.wait()
        time.sleep(1)
    a.send_signal(signal.SIGCONT)
    code = a.wait()
    fenced = "was taken over by" in log_a.read_text()
    woke = "found out and wrote nothing" if fenced else "did NOT find out"
    said["SIGSTOP for longer than --stale-after=10"] = (
        f"taken over {taken - frozen:.1f} s after the freeze; the woken worker {woke}, exit {code}")

    # pg_ctl restart under a running worker
    log = folder / "restart.log"
    w = worker(sweep_args(folder, "restart", 3, epochs * 4, url, "a", **{"stale-after": 30}), log)
    wait_for(folder / "a" / "restart" / "trial-1" / "last.pth")
    took = server.restart()
    code = w.wait()
    text = log.read_text()
    stall = re.search(r"answers again after ([0-9.]+) s", text)
    seen = f"stalled {stall.group(1)} s" if stall else "saw no failed call (pre-ping reconnected)"
    said["pg_ctl restart mid-sweep"] = (
        f"restart took {took:.2f} s; the worker {seen}, exit {code}, {text.count(' complete, ')} trials complete")

    # the server gone past the patience (--stale-after=8: 4 s)
    log = folder / "gone.log"
    args = sweep_args(folder, "gone", 1, epochs * 10, url, "a", **{"stale-after": 8})
    w = worker(args, log)
    wait_for(folder / "a" / "gone" / "trial-0" / "last.pth")
    server.stop()
    stopped = time.time()
    code = w.wait()
    exited = time.time()
    server.start()
    again_log = folder / "gone-again.log"
    back = time.time()
    again = worker(args, again_log)
    resumed = line_time(again_log, r"resuming .*last\.pth")
    code_again = again.wait()
    said["server stopped past the patience (4 s)"] = (
        f"the worker saved last.pth and exited {code} {exited - stopped:.1f} s after the stop: "
        f"{log.read_text().strip().splitlines()[-1][:110]}...; the same command resumed it "
        f"{resumed - back:.1f} s after the server was back, exit {code_again}")
    return said


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--cost-trials", type=int, default=40)
    options = parser.parse_args()
    bin_dir, why = find_programs()
    if bin_dir is None:
        sys.exit(f"no PostgreSQL here: {why}")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        make_data(folder / "data", per_class=options.images // 2)
        (folder / "space.yaml").write_text(SPACE)
        server = Server(bin_dir).start()
        try:
            url = server.create_database("bench")
            journal, codes_j = two_workers(folder, "journal", options.trials, options.epochs)
            database, codes_d = two_workers(folder, "pg", options.trials, options.epochs, url)
            print(f"2 workers, {options.trials} trials of {options.epochs} epochs ({options.images} images, LeNet 32 px):")
            print(f"  journal file:  {journal:6.1f} s (exit {codes_j})")
            print(f"  PostgreSQL:    {database:6.1f} s (exit {codes_d}), {database / journal:.2f}x the journal's time")
            cost_journal = storage_cost(folder, "", options.cost_trials, options.epochs)
            cost_db = storage_cost(folder, server.create_database("cost"), options.cost_trials, options.epochs)
            print(f"storage per trial ({options.cost_trials} trials of {options.epochs} reports, no training), "
                  f"and opening a new study:")
            print(f"  journal file:  {cost_journal[1] * 1000:6.1f} ms a trial; opened in {cost_journal[0]:.2f} s")
            print(f"  PostgreSQL:    {cost_db[1] * 1000:6.1f} ms a trial; opened in {cost_db[0]:.2f} s (its schema made)")
            for name, text in schema_race(server).items():
                print(f"schema race, {name}: {text}")
            for name, text in drills(folder, server, options.epochs).items():
                print(f"{name}: {text}")
        finally:
            server.remove()


if __name__ == "__main__":
    main()
