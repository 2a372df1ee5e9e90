"""`python main.py runs`: a table of the runs under --checkpoint-dir, read from each run's
status.json (written by the engine at start, after every epoch and at the end), so listing a
hundred runs loads no checkpoint. Runs written before status.json existed are read from
their last.pth (memory-mapped: the tensors are not read).
"""
import os
import socket
import time
from pathlib import Path

from configs.loader import read_yaml
from utils.core.errors import UsageError, UserError
from utils.core.records import Damaged
from utils.core.shell import main_command
from utils.cv import is_group, read_summary
from utils.engine import status as run_status
from utils.engine.checkpoint import is_run
from utils.tables import columns

COLUMNS = ("env", "experiment", "model", "epochs", "best", "state", "size", "updated", "restarts")


def find_runs(checkpoint_dir):
    """Run dirs under `checkpoint_dir`: sub-folders holding a config.yaml or a checkpoint."""
    root = Path(checkpoint_dir)
    if root.is_file():
        raise UserError(f"--checkpoint-dir={checkpoint_dir} is a file, not a folder of runs")
    if not root.is_dir():
        raise UserError(f"--checkpoint-dir={checkpoint_dir} does not exist: no runs yet (train one: {main_command()} train --env=<name>)")
    return sorted(p for p in root.iterdir() if is_run(p))


def describe_run(run_dir):
    """{column: text} of one run."""
    run_dir = Path(run_dir)
    record = _status(run_dir)
    best = record.get("best")
    size = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file())
    return {
        "env": run_dir.name,
        "experiment": str(record.get("experiment") or "?"),
        "model": str(record.get("model") or "?"),
        "epochs": f"{record.get('epoch', '?')}/{record.get('max_epoch', '?')}",
        "best": f"{best['metric']} {best['value']:.4f} (epoch {best['epoch']})" if best else "-",
        "state": _state(record),
        "size": _size(size),
        "updated": record.get("updated") or time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run_dir.stat().st_mtime)),
        "restarts": _restarts(record.get("restarts")),
        "damaged": record.get("damaged"),
    }


def _status(run_dir):
    try:
        record = run_status.read(run_dir)
    except Damaged as damaged:  # the run's checkpoint and config.yaml still say a lot
        return {**_status_from_files(run_dir), "status": "damaged", "damaged": str(damaged)}
    return record if record is not None else _status_from_files(run_dir)


def _status_from_files(run_dir):
    """What a run without status.json (an older runner's) says about itself."""
    record = {}
    try:
        saved = read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
        record.update(experiment=saved.get("experiment") or "classify", model=saved.get("model"),
                      max_epoch=saved.get("max_epoch"))
    except UsageError:
        pass
    last = run_dir / "last.pth"
    if last.is_file():
        import torch

        try:
            state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
            record.update(epoch=state.get("epoch"), best=state.get("best"))
        except Exception:  # noqa: BLE001 - an unreadable file is a state to show, not a crash
            record["status"] = "unreadable"
    if "status" not in record:
        done = record.get("epoch") is not None and str(record.get("epoch")) == str(record.get("max_epoch"))
        record["status"] = "crashed" if (run_dir / "emergency.pth").is_file() else "finished" if done else \
            "stopped" if last.is_file() else "no checkpoint"
    return record


def _state(record):
    status = record.get("status", "?")
    if status == "pruned" and record.get("pruned"):
        return "pruned (" + str(record["pruned"]).split(" (")[0] + ")"
    if status == "finished" and record.get("stopped_early"):
        return "finished (early stop: " + str(record["stopped_early"]).split(": ", 1)[-1].split(" (")[0] + ")"
    if status == "running" and record.get("host") == socket.gethostname():
        try:
            os.kill(int(record["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            return "killed"  # ended without a word (SIGKILL, power): resume from last.pth
    return status


def _restarts(restarts):
    """'-', or how many times the run went on after it was killed, crashed or stopped, and
    why the last time: '2 (killed)' (status.json holds each one)."""
    if not isinstance(restarts, list) or not restarts:
        return "-"
    last = restarts[-1].get("after", "?") if isinstance(restarts[-1], dict) else "?"
    return f"{len(restarts)} ({str(last).split(':')[0]})"


def _size(count):
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def describe_group(group_dir):
    """[the group's row, then one row per fold run]: a cross-validation group (utils/cv)."""
    group_dir = Path(group_dir)
    members = sorted((p for p in group_dir.glob("fold-*") if is_run(p)), key=lambda p: int(p.name[5:]) if
                     p.name[5:].isdigit() else 0)
    folds = [describe_run(member) for member in members]
    for fold in folds:
        fold["env"] = f"  {group_dir.name}/{fold['env']}"
    try:
        total = int((read_yaml(group_dir / "group.yaml") or {}).get("folds") or 0)
    except UsageError:
        total = 0
    total = total or len(folds)
    done = sum(fold["state"].startswith("finished") for fold in folds)
    try:
        summary, note = read_summary(group_dir), None
    except Damaged as damaged:
        summary, note = None, str(damaged)
    states = {fold["state"] for fold in folds}
    state = "finished" if done == total else next((s for s in ("running", "killed", "crashed", "stopped") if s in states),
                                                    "incomplete")
    head = {"env": group_dir.name, "experiment": folds[0]["experiment"] if folds else "?",
            "model": folds[0]["model"] if folds else "?", "epochs": f"folds {done}/{total}",
            "best": (f"cv {summary['metric']} {summary['mean']:.4f} ± {summary['std']:.4f}" if summary else "-"),
            "state": state, "size": _size(sum(f.stat().st_size for f in group_dir.rglob("*") if f.is_file())),
            "updated": max([fold["updated"] for fold in folds] or ["-"]), "restarts": "-", "damaged": note}
    return [head, *folds]


def render(checkpoint_dir):
    """The table as text, newest run last (a cross-validation group as one row, then its
    folds); then the sweeps' studies, if any."""
    entries = [[describe_run(run)] for run in find_runs(checkpoint_dir)]
    entries += [describe_group(folder) for folder in sorted(Path(checkpoint_dir).iterdir()) if is_group(folder)]
    studies = _studies(checkpoint_dir)
    if not entries and studies:
        return "\n".join(studies)
    if not entries:
        return f"no runs in {checkpoint_dir} yet (train one: {main_command()} train --env=<name>)"
    entries.sort(key=lambda entry: entry[0]["updated"])
    rows = [row for entry in entries for row in entry]
    lines = columns(COLUMNS, [[row[c] for c in COLUMNS] for row in rows])
    damaged = [f"run {row['env']}: {row['damaged']}; the row shows what its checkpoint says (remove the file to "
               f"read it so; a resume writes it anew)" for row in rows if row["damaged"]]
    return "\n".join(lines + damaged + ([""] + studies if studies else []))


def _studies(checkpoint_dir):
    """The studies part of the table ([] when no folder holds a sweep's sweep.yaml): optuna
    is imported only when there is one."""
    root = Path(checkpoint_dir)
    if not (root.is_dir() and any((p / "sweep.yaml").is_file() for p in root.iterdir())):
        return []
    from utils.sweep.report import render_studies

    where = "" if str(checkpoint_dir) == "checkpoints" else f" --checkpoint-dir={checkpoint_dir}"
    heading = f"sweeps (their trials: {main_command()} sweep --study=<study> --summary{where}):"
    return [heading, *render_studies(checkpoint_dir)]
