"""Sweeps on a real PostgreSQL server that the tests start themselves (postgres_server.py):
workers on two "machines" (separate --checkpoint-dirs, nothing shared but the database) share
one study; a worker killed with kill -9 is taken over (resumed bit for bit where its run dir
is, started again from scratch where it is not); a frozen worker loses its trial and writes
nothing more; a restarted server is ridden out; a server gone for longer than the patience
makes the worker save its trial and stop with one line, and the same command resumes it;
bad URLs are one line within seconds; first workers racing to create the schema all succeed.
Skipped, with the reason, only where no PostgreSQL server can be started.
"""
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, load, run_cli
from postgres_server import PASSWORD, Server, find_programs
from test_sweep import start, sweep_flags

pytestmark = pytest.mark.slow  # a server, and real interpreters killed, frozen and cut off
ONE_LR = "pruner: none\nparams:\n  lr: {low: 1.0e-3, high: 3.0e-2, log: true}\n"
_names = itertools.count()


@pytest.fixture(scope="module")
def server():
    bin_dir, why = find_programs()
    if bin_dir is None:
        pytest.skip(why)
    started = Server(bin_dir)
    try:
        yield started.start()
    finally:
        started.remove()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from conftest import make_dogcat

    root = tmp_path_factory.mktemp("postgres") / "data"
    make_dogcat(root, per_class=8, test_images=3, extras=False)
    return root


@pytest.fixture
def url(server):
    """A fresh database of its own for each test."""
    return server.create_database(f"study{next(_names)}")


def flags(data, tmp_path, machine, study, trials, url, **extra):
    """The sweep command of a worker on `machine` (its own --checkpoint-dir under tmp_path)."""
    args = sweep_flags(data, tmp_path, study, trials, ONE_LR, storage=url, **{"batch-size": 4, **extra})
    return [arg.replace(f"--checkpoint-dir={tmp_path / 'runs'}", f"--checkpoint-dir={tmp_path / machine}")
            for arg in args]


def states(server, url):
    """[(number, state)] of the study in the database of `url`, read with SQL (no runner code)."""
    rows = server.query(url.rsplit("/", 1)[1], "SELECT number, state FROM trials ORDER BY number")
    return [(number, str(state).split(".")[-1]) for number, state in rows]


def leases(server, url):
    return server.query(url.rsplit("/", 1)[1], "SELECT trial_id, host, pid, run_dir FROM runner_trial_leases")


def same_weights(ours, reference):
    mine, theirs = load(ours), load(reference)
    assert mine["epoch"] == theirs["epoch"]
    for key, value in theirs["model"].items():
        assert torch.equal(mine["model"][key], value), key
    for index, value in theirs["optimizer"]["state"].items():
        assert torch.equal(mine["optimizer"]["state"][index]["exp_avg"], value["exp_avg"])


def reference_run(tmp_path, trial_dir):
    """The trial trained uninterrupted: a plain train run of its config.yaml."""
    name = f"ref-{trial_dir.parent.name}-{trial_dir.name}"
    done = run_cli("train", f"--config={trial_dir / 'config.yaml'}", f"--checkpoint-dir={tmp_path / 'ref'}",
                   f"--env={name}")
    assert done.returncode == 0, done.stderr
    return tmp_path / "ref" / name / "last.pth"


def test_two_machines_share_one_study_and_each_trial_lives_where_it_ran(server, url, data, tmp_path):
    workers = [start(flags(data, tmp_path, machine, "pair", 4, url, **{"max-epoch": 2})) for machine in ("a", "b")]
    outputs = [worker.communicate(timeout=240) for worker in workers]
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    assert states(server, url) == [(n, "COMPLETE") for n in range(4)]
    assert sum(int(out.split("this worker ran ")[1].split(" trial")[0]) for out, _ in outputs) == 4
    assert leases(server, url) == []  # every finished trial released its lease
    where = {}
    for number in range(4):
        found = [m for m in ("a", "b") if (tmp_path / m / "pair" / f"trial-{number}" / "best.pth").is_file()]
        assert len(found) == 1, (number, found)  # trained once, on one machine
        where[number] = found[0]

    # sweep.yaml keeps the URL with its password masked; the driver reads it from PGPASSWORD (or ~/.pgpass)
    record = (tmp_path / "a" / "pair" / "sweep.yaml").read_text()
    assert PASSWORD not in record and f"storage: {url.replace(PASSWORD, '***')}" in record
    summary = run_cli("sweep", "--study=pair", f"--checkpoint-dir={tmp_path / 'a'}", "--summary",
                      env={"PGPASSWORD": PASSWORD})
    assert summary.returncode == 0, summary.stderr
    rows = {line.split()[0]: line for line in summary.stdout.splitlines()[3:7]}
    host = socket.gethostname()
    for number, machine in where.items():
        shown = "here" if machine == "a" else f"{host}:{tmp_path / 'b' / 'pair' / f'trial-{number}'}"
        assert re.search(rf"\s{re.escape(shown)}\s*$", rows[str(number)]), rows[str(number)]
    elsewhere = sum(machine == "b" for machine in where.values())
    listing = run_cli("runs", f"--checkpoint-dir={tmp_path / 'a'}", env={"PGPASSWORD": PASSWORD})
    assert listing.returncode == 0, listing.stderr
    assert ("4 complete" + (f" ({elsewhere} on other machines)" if elsewhere else "")) in listing.stdout

    # A machine that ran none of its trials shows the study from the database alone.
    remote = run_cli("sweep", "--study=pair", f"--checkpoint-dir={tmp_path / 'd'}", "--summary", f"--storage={url}")
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout.startswith(f"study pair in {tmp_path / 'd' / 'pair'}: 4 complete; val_logloss")
    for number, machine in where.items():
        assert f"{host}:{tmp_path / machine / 'pair' / f'trial-{number}'}" in remote.stdout
    assert "(another machine): test, reproduce or train it anew there" in remote.stdout
    assert not (tmp_path / "d").exists()

    # A third machine's worker must bring the study's options (kept in the database: no
    # sweep.yaml is shared); its data folder may lie elsewhere.
    moved = tmp_path / "elsewhere"
    moved.symlink_to(data)
    odd = [arg.replace(str(data), str(moved)) for arg in flags(data, tmp_path, "c", "pair", 4, url, **{"max-epoch": 2})]
    refused = run_cli(*odd, "--weight-decay=0.5")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: study pair's trials run with --weight-decay=0.0 and this worker gives 0.5 (see the study's database); give "
        "the study's options, or start another --study")
    assert not (tmp_path / "c").exists()
    joined = run_cli(*odd)
    assert joined.returncode == 0, joined.stderr
    assert "sweep pair: 4 of 4 trials finished; this worker ran 0 trials" in joined.stdout


def test_a_killed_worker_is_resumed_where_its_run_dir_is_and_redone_where_it_is_not(server, url, data, tmp_path):
    # 12 train images in batches of 4: step 7 opens epoch 3, so epoch 1's last.pth is on disk
    machine_a = flags(data, tmp_path, "a", "kill", 1, url, **{"max-epoch": 3})
    killed = start(machine_a, env={"RUNNER_FAULT_AT_STEP": "7:SIGKILL"})
    killed.communicate(timeout=120)
    assert killed.returncode == -9
    assert states(server, url) == [(0, "RUNNING")]
    (lease,) = leases(server, url)
    trial_a = tmp_path / "a" / "kill" / "trial-0"
    assert lease[1:] == (socket.gethostname(), killed.pid, str(trial_a))
    summary = run_cli("sweep", "--study=kill", f"--checkpoint-dir={tmp_path / 'a'}", "--summary", f"--storage={url}")
    assert re.split(r"\s{2,}", summary.stdout.splitlines()[3])[:2] == ["0", "stale (resumable)"]

    # Another machine: its worker takes the trial over at once (the owner's pid is gone from
    # this host) but cannot reach its run dir, so it trains it again from the first epoch.
    other = run_cli(*flags(data, tmp_path, "b", "kill", 1, url, **{"max-epoch": 3}))
    assert other.returncode == 0, other.stderr
    assert f"trial 0, taking it over (its worker, pid {killed.pid} on this machine, is gone)" in other.stderr
    assert (f"trial 0 starts again from its first epoch (same parameters and seed): its run dir "
            f"{socket.gethostname()}:{trial_a} is not reachable from here") in other.stderr
    assert states(server, url) == [(0, "COMPLETE")]
    trial_b = tmp_path / "b" / "kill" / "trial-0"
    same_weights(trial_b / "last.pth", reference_run(tmp_path, trial_b))

    # The machine that holds the run dir: a worker restarted there resumes it from last.pth.
    second = server.create_database(f"study{next(_names)}")
    machine_a = flags(data, tmp_path, "a", "kill2", 1, second, **{"max-epoch": 3})
    killed = start(machine_a, env={"RUNNER_FAULT_AT_STEP": "7:SIGKILL"})
    killed.communicate(timeout=120)
    again = run_cli(*machine_a)
    assert again.returncode == 0, again.stderr
    trial_a = tmp_path / "a" / "kill2" / "trial-0"
    assert f"trial 0, resuming it (its worker, pid {killed.pid} on this machine, is gone)" in again.stderr
    assert f"resuming {trial_a / 'last.pth'}" in again.stderr
    assert states(server, second) == [(0, "COMPLETE")]
    same_weights(trial_a / "last.pth", reference_run(tmp_path, trial_a))


def stands_still(process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with open(f"/proc/{process.pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "T":
                return True
        time.sleep(0.05)
    return False


def test_a_frozen_worker_loses_its_trial_after_stale_after_and_tells_nothing(server, url, data, tmp_path):
    stale = 3
    frozen = start(flags(data, tmp_path, "a", "freeze", 1, url, **{"max-epoch": 3, "stale-after": stale}),
                   env={"RUNNER_FAULT_AT_STEP": "5:SIGSTOP"})
    try:
        assert stands_still(frozen)
        time.sleep(stale + 1)  # its heartbeat stops: the lease is older than --stale-after in the server's clock
        taker = run_cli(*flags(data, tmp_path, "b", "freeze", 1, url, **{"max-epoch": 3, "stale-after": stale}))
        assert taker.returncode == 0, taker.stderr
        assert re.search(rf"trial 0, taking it over \(its worker {re.escape(socket.gethostname())} \(pid "
                         rf"{frozen.pid}\) was not heard from for \d+ s\)", taker.stderr), taker.stderr
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    _, err = frozen.communicate(timeout=120)
    assert frozen.returncode == 0, err[-3000:]
    assert "trial trial-0 was taken over by" in err  # it found out, and wrote nothing more
    assert states(server, url) == [(0, "COMPLETE")]
    status = json.loads((tmp_path / "a" / "freeze" / "trial-0" / "status.json").read_text())
    assert status["status"] == "running" and status["epoch"] == 1  # as it was when it froze: nothing written since


def test_a_restarted_server_is_ridden_out(server, url, data, tmp_path):
    worker = start(flags(data, tmp_path, "a", "restart", 3, url, **{"max-epoch": 30, "image-size": 48,
                                                                       "stale-after": 30}))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_path / "a" / "restart" / "trial-1" / "last.pth").is_file():
        time.sleep(0.05)
    assert worker.poll() is None
    took = server.restart()  # every connection of the worker is cut, mid-trial
    _, err = worker.communicate(timeout=240)
    assert worker.returncode == 0, err[-3000:]
    assert took < 10
    assert states(server, url) == [(n, "COMPLETE") for n in range(3)]
    trial = tmp_path / "a" / "restart" / "trial-1"
    same_weights(trial / "last.pth", reference_run(tmp_path, trial))  # the trial cut off mid-run lost nothing


def test_a_server_gone_longer_than_the_patience_saves_the_trial_and_the_same_command_resumes(server, url, data,
                                                                                              tmp_path):
    args = flags(data, tmp_path, "a", "gone", 1, url, **{"max-epoch": 40, "image-size": 48, "stale-after": 4})
    worker = start(args)
    trial = tmp_path / "a" / "gone" / "trial-0"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (trial / "last.pth").is_file():
        time.sleep(0.05)
    server.stop()
    try:
        _, err = worker.communicate(timeout=120)
    finally:
        server.start()
    assert worker.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: the study's database postgresql://runner:\*\*\*@127\.0\.0\.1:{server.port}/\S+ has "
                        rf"not answered for \d+ s \(.*\); trial 0 saved its last\.pth in {re.escape(str(trial))} and "
                        rf"this worker stops: run the same command again once the database answers, and it resumes "
                        rf"the trial", last), last
    assert PASSWORD not in err
    saved = load(trial / "last.pth")
    assert 0 < saved["epoch"] < 40 or saved["step_in_epoch"] > 0

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert f"resuming {trial / 'last.pth'}" in again.stderr
    assert states(server, url) == [(0, "COMPLETE")]
    same_weights(trial / "last.pth", reference_run(tmp_path, trial))


def tree(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize("what", ["wrong password", "unknown database", "nobody listening"])
def test_a_bad_connection_is_one_line_within_seconds_and_writes_nothing(server, data, tmp_path, what):
    bad = {"wrong password": server.url("postgres", password="not-it"),
           "unknown database": server.url("no_such_db"),
           "nobody listening": server.url("postgres", port=_closed_port())}[what]
    args = flags(data, tmp_path, "a", "bad", 1, bad)
    before = tree(tmp_path)
    started = time.monotonic()
    result = run_cli(*args)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()
    assert len(line) == 1 and re.fullmatch(r"error: --storage=postgresql://runner:\*\*\*@127\.0\.0\.1:\d+/\w+: cannot "
                                           r"reach the database \(.+\); start it, or check the host, port, name and "
                                           r"credentials", line[0]), result.stderr
    assert "not-it" not in result.stderr and PASSWORD not in result.stderr
    assert took < 12
    assert tree(tmp_path) == before


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when this returns: nothing listens there


def test_first_workers_racing_to_create_the_schema_all_get_the_study(server, url):
    at = time.time() + 3  # every process starts its storage at this moment
    code = ("import sys, time, optuna; sys.path.insert(0, %r); from utils.sweep import postgres; "
            "optuna.logging.set_verbosity(optuna.logging.ERROR); time.sleep(max(0, %r - 0.05 - time.time())); "
            "exec('while time.time() < %r: pass'); "
            "optuna.create_study(study_name='race', storage=postgres.storage(%r, 10), load_if_exists=True); "
            "print('ok')") % (str(ROOT), at, at, url)
    racers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(6)]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [out.strip() for out, _ in outputs] == ["ok"] * 6, [err[-500:] for _, err in outputs]
    assert server.query(url.rsplit("/", 1)[1], "SELECT count(*) FROM studies") == [(1,)]


def test_one_pool_per_process_and_a_lease_taken_over_fences_its_former_owner(server, url, tmp_path):
    import optuna

    from utils.sweep import postgres
    from utils.sweep.lease import LeaseLost

    found = postgres.storage(url, 5)
    assert postgres.storage(url, 5) is found  # every study object of this process shares it
    studies = [optuna.create_study(study_name="pool", storage=postgres.storage(url, 5), load_if_exists=True)
               for _ in range(5)]
    trial = studies[0].ask()
    for study in studies:
        study.get_trials(deepcopy=False)
    database = url.rsplit("/", 1)[1]
    (count,) = server.query(database, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'runner sweep' "
                                      "AND datname = %s", database)[0]
    assert 1 <= count <= postgres.POOL_SIZE + postgres.POOL_OVERFLOW

    first = postgres.DatabaseLease(found, trial._trial_id, tmp_path / "trial-0", 60)
    assert first.claim()
    assert not postgres.DatabaseLease(found, trial._trial_id, tmp_path / "x", 60).claim()  # taken: a new claim fails
    record = postgres.holders(found, [trial._trial_id])[trial._trial_id]
    taker = postgres.DatabaseLease(found, trial._trial_id, tmp_path / "trial-0", 60, former=record)
    late = postgres.DatabaseLease(found, trial._trial_id, tmp_path / "trial-0", 60, former=record)
    assert taker.claim() and not late.claim()  # compare-and-set: one taker only
    assert not first.renew()
    with pytest.raises(LeaseLost, match="was taken over by"):
        first.check()
    first.release()  # not ours any more: the taker's lease stays
    assert postgres.holders(found, [trial._trial_id])[trial._trial_id]["token"] == taker.token
    taker.release()
    assert postgres.holders(found, [trial._trial_id]) == {}


def test_a_trial_asked_but_never_leased_is_taken_over_at_once(server, url, data, tmp_path):
    """A worker killed between asking the study for a trial and writing its lease (inside the
    study lock) leaves a RUNNING trial with no lease row: the next worker runs it, and the
    study still ends with exactly --trials trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    orphan = optuna.create_study(study_name="orphan", storage=url, direction="minimize")
    orphan.ask()  # what the killed worker's ask left: no parameters, no lease
    result = run_cli(*flags(data, tmp_path, "a", "orphan", 2, url, **{"max-epoch": 1}))
    assert result.returncode == 0, result.stderr
    assert "trial 0, taking it over (its worker stopped and released it)" in result.stderr
    assert states(server, url) == [(0, "COMPLETE"), (1, "COMPLETE")]
    assert "this worker ran 2 trials" in result.stdout
