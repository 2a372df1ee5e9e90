"""`python main.py reproduce`: train a run again in a scratch run dir and compare as it goes.

The scratch run is an ordinary run of the engine (utils/engine/loop.py) with the original's
config, beside the original in --checkpoint-dir (<run>.reproduce-<time>), so it writes its
own manifest and fingerprints and the original's files are only read. A `Comparer` is its
`trial`: after each epoch end the engine hands it the epoch's fingerprints, and it stops
the run at the first difference or at the last epoch asked for. Then the report: exit 0
with `reproduced: epochs 1-2 bit-identical (...)`, or exit 1 with where the numbers first
parted and every manifest item that differs now; either way the items that changed are
listed. The scratch dir is removed unless --keep.
"""
import dataclasses
import logging
import shutil

import torch

from utils import loggers
from utils.core.errors import UsageError, UserError, plural
from utils.engine import checkpoint, distributed, fingerprints, manifest, manifest_diff, run_lock, runtime
from utils.engine import loop as engine
from utils.engine.safe_stop import Stopped
from utils.reproduce import compare
from utils.reproduce.plan import scratch_name

log = logging.getLogger(__name__)


class NotReproduced(UserError):
    """The numbers differ (the report is on stdout): exit 1, no further line."""


class Comparer:
    """The scratch run's `trial` (see engine.train): compares each epoch end's fingerprints
    with the original's, and ends the run at the first difference or at epoch `target`."""
    quiet = True  # the report says what happened; not the engine's "trained ..." lines

    def __init__(self, plan, scratch_dir, start_epoch, target, saved, altered=()):
        self.plan, self.scratch_dir, self.start_epoch, self.target = plan, scratch_dir, start_epoch, target
        self.saved = saved  # {epoch: original checkpoint} (tensor comparisons)
        self.altered = set(altered)  # epochs whose record disagrees with their checkpoint: compared with the checkpoint
        self.identical, self.within, self.unchecked = [], {}, []  # epochs; {epoch: max diff}; epochs
        self.parted = None  # (epoch, text, [(tensor, max diff)]) of the first difference
        self.objects, self.tensors, self.metrics = [], 0, 0  # what was compared: objects, tensors, metrics per epoch
        self.resume_command = runtime.command_again()
        self.config_source = f"run {plan.env}'s own"  # what the start-of-run log says of the config

    def epoch_end(self, epoch, metrics):
        return None

    def check_owner(self):
        return None

    def compare(self, epoch, prints, metrics=None):
        record = self.plan.prints.get(epoch) or {}
        expected = record.get("objects") if epoch not in self.altered else None
        self.objects, self.tensors = [n for n in prints if prints[n]["tensors"] or n != "scaler"], fingerprints.tensor_count(prints)
        if expected is not None:
            parted = fingerprints.differences(expected, prints)
            if not parted:
                self.identical.append(epoch)
            elif not self._tolerated(epoch, compare.describe_parted(parted)):
                return self._stop(epoch)
        elif epoch in self.saved:
            if not self._tolerated(epoch, None):
                return self._stop(epoch)
        else:
            self.unchecked.append(epoch)
        # The state can agree while what the epoch measured does not (a validation image changed)
        measured = fingerprints.plain_metrics(metrics)
        self.metrics = len(set(record.get("metrics") or {}) & set(measured))
        wrong = compare.metric_differences(record.get("metrics"), measured, self.plan.options.atol)
        if wrong:
            self.identical = [done for done in self.identical if done != epoch]
            self.within.pop(epoch, None)
            self.parted = (epoch, [f"its metrics, while the state agrees: {wrong}"], [])
            return self._stop(epoch)
        return self._stop(epoch) if epoch >= self.target else None

    def _tolerated(self, epoch, described):
        """Compare tensor by tensor with the original's checkpoint of `epoch` (when it kept
        one); True when equal, or within --atol."""
        found = []
        if epoch in self.saved:
            found, compared, objects = compare.tensor_differences(self.saved[epoch], self.scratch_dir / checkpoint.LAST)
            if not compared:  # nothing in common to compare (an average saved in another form)
                self.unchecked.append(epoch)
                return True
            if described is None:  # compared by the checkpoint alone: say what was
                self.objects, self.tensors = objects, compared
            if not found:
                self.identical.append(epoch)
                return True
            if self.plan.options.atol and all(diff <= self.plan.options.atol for _, diff in found):
                self.within[epoch] = found[0][1]
                return True
            if described is None:
                described = [f"{plural(len(found), 'tensor')} of {compared} differ from {self.saved[epoch].name}"]
        self.parted = (epoch, described, found)
        return False

    def _stop(self, epoch):
        return f"reproduce: compared up to epoch {epoch}"


def main(plan):
    """Train `plan`'s run again in a scratch dir; print the report; raise NotReproduced (exit 1)
    when the numbers differ."""
    name = distributed.broadcast_object(scratch_name(plan) if distributed.is_main() else None)
    cfg = dataclasses.replace(plan.cfg, env=name, loggers=loggers.files_only(plan.cfg))  # no tracker run for a check
    scratch = cfg.run_dir
    # the scratch run's lock, from the copy of --from into it to its removal (the engine takes it again)
    lock = distributed.on_main(lambda: run_lock.acquire(scratch))
    try:
        start = _start(plan, scratch)
        target = distributed.broadcast_object(_target(plan, start, cfg) if distributed.is_main() else None)
        altered = compare.altered_records(start["ends"], plan.prints)  # ({} on other ranks: they print nothing)
        for epoch, (name, objects) in altered.items():
            print(f"note: {plan.run_dir / fingerprints.FOLDER}/epoch-{epoch:04d}.json disagrees with the fingerprints "
                  f"{name} carries for epoch {epoch} ({', '.join(objects)}): the record was changed after the run "
                  f"wrote it; epoch {epoch} is compared with {name} instead")
        comparer = Comparer(plan, scratch, start["epoch"], target, start["saved"], altered)
        _note_world(plan, start["epoch"])
        if distributed.is_main():
            print(f"reproduce {plan.env}: training {_span(range(start['epoch'] + 1, target + 1))} again in {scratch}"
                  f"{' from ' + str(plan.start) if plan.start else ''}", flush=True)
        try:
            engine.train(cfg, trial=comparer)
        except (Stopped, KeyboardInterrupt) as stop:
            code = getattr(stop, "exit_code", 130)
            raise Stopped(f"reproduce of {plan.env} stopped before it finished; nothing of {plan.run_dir} was written",
                          code) from None
        if distributed.is_main():
            _report(plan, comparer, scratch, start)
    finally:
        if distributed.is_main():
            if plan.options.keep and scratch.is_dir():
                print(f"scratch run kept: {scratch}")
            elif not plan.options.keep:
                shutil.rmtree(scratch, ignore_errors=True)
            lock.release()
        distributed.broadcast_object(None)  # every rank waits until the scratch dir is gone


def _start(plan, scratch):
    """{"epoch", "step", "global_step", "saved": {epoch: path}, "ends": compare.saved_epochs}
    of where the re-training starts (the --from checkpoint copied into the scratch dir as its
    last.pth, or the run's start) and the original's epoch-end checkpoints (rank 0 reads them)."""
    ends = compare.saved_epochs(plan.run_dir) if distributed.is_main() else {}
    saved = {epoch: path for epoch, (path, _) in ends.items()}
    if plan.start is None:
        return {"epoch": 0, "step": 0, "global_step": 0, "saved": saved, "ends": ends}
    state = checkpoint.load_checkpoint(plan.start)
    if state.get("kind") == checkpoint.WEIGHTS_KIND or "epoch" not in state or not isinstance(state.get("config"), dict):
        raise UsageError(f"--from={plan.start} holds weights only, no run state; give last.pth or an epoch_<n>.pth of the run")
    if not plan.threads_given and state.get("threads"):
        torch.set_num_threads(state["threads"])  # the count the run had when it saved this: float sums split alike
    recorded = state.get("fingerprints")
    if recorded and fingerprints.summary(fingerprints.of_checkpoint(state)) != recorded:
        raise UserError(f"--from={plan.start} does not match the fingerprints written into it: the file changed "
                        f"after the run saved it")
    epoch_record = None if state.get("step_in_epoch") else (plan.prints.get(state["epoch"]) or {}).get("objects")
    if recorded and epoch_record and fingerprints.summary(epoch_record) != recorded:
        raise UsageError(f"--from={plan.start} is not run {plan.env}'s state at the end of epoch {state['epoch']}: its "
                         f"fingerprints differ from the run's record of that epoch (another run's checkpoint?)")
    if distributed.is_main():
        scratch.mkdir(parents=True)
        shutil.copyfile(plan.run_dir / "config.yaml", scratch / "config.yaml")
        shutil.copyfile(plan.start, scratch / checkpoint.LAST)
    distributed.broadcast_object(None)  # the copy is there before any rank resumes it
    return {"epoch": state["epoch"], "step": state.get("step_in_epoch", 0), "global_step": state.get("global_step", 0),
            "saved": saved, "ends": ends}


def _target(plan, start, cfg):
    """The last epoch to train: --epochs after the start, or every epoch the run recorded
    (--all); for a run without fingerprints, up to an epoch whose checkpoint it kept; never
    past the --max-epoch the run began with (a resume that trained it further changed its
    schedule's length: --from a checkpoint of that resume checks those epochs)."""
    recorded = sorted(plan.prints) or sorted(start["saved"])
    done = max(recorded, default=0)
    if done <= start["epoch"]:
        what = "no fingerprints and no epoch-end checkpoint" if not recorded else f"epochs up to {done}"
        raise UsageError(f"run {plan.env} recorded {what}: nothing after "
                         f"{'--from=' + str(plan.options.start) if plan.start else 'its start'} to compare with")
    target = done if plan.options.all else min(done, start["epoch"] + plan.options.epochs)
    if not plan.prints:
        later = [epoch for epoch in start["saved"] if epoch >= target]
        target = later[0] if later else done
    if target > cfg.max_epoch and plan.start is None:
        print(f"note: {plan.env} began with --max-epoch={cfg.max_epoch} and a resume trained it further; epochs after "
              f"{cfg.max_epoch} are checked --from a checkpoint of theirs (--keep-checkpoints)")
        target = cfg.max_epoch
    return target


def _note_world(plan, epoch):
    block = manifest_diff.block_at(plan.manifest, epoch + 1)[1] if plan.manifest else {}
    world = block.get("world_size")
    if distributed.is_main() and world and world != distributed.world_size():
        print(f"note: {plan.env} was trained by {plural(world, 'process', 'processes')} and this is "
              f"{distributed.world_size()}; to reproduce it, launch as it was: "
              f"torchrun --nproc_per_node={world} main.py reproduce ...")


def _steps(plan, epoch):
    end = (plan.prints.get(epoch) or {}).get("global_step")
    before = (plan.prints.get(epoch - 1) or {}).get("global_step", 0 if epoch == 1 else None)
    return f" (steps {before + 1}-{end})" if isinstance(end, int) and isinstance(before, int) else ""


def _span(epochs):
    epochs = sorted(epochs)
    return f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"


def _changes(plan, scratch, start_epoch):
    """The manifest items that differ between the original (the block that trained the first
    compared epoch) and the scratch run, or the reason nothing can be compared."""
    if plan.manifest is None:
        return None
    index, old = manifest_diff.block_at(plan.manifest, start_epoch + 1)
    new_manifest = manifest.read(scratch) or {"environments": [{}]}
    new_index = len(new_manifest["environments"]) - 1
    return manifest_diff.differences(old, new_manifest["environments"][new_index],
                                     manifest.read_files(plan.run_dir).get(index),
                                     manifest.read_files(scratch).get(new_index))


def _report(plan, comparer, scratch, start):
    changes = _changes(plan, scratch, start["epoch"])
    if plan.manifest is None:
        print(f"{plan.env} has no manifest.json (trained before the runner wrote one): its code, packages, machine, "
              f"threads and data cannot be compared; {'its fingerprints are' if plan.prints else 'its saved weights are'} "
              f"compared instead")
    if _device(scratch).startswith("cuda") and not plan.cfg.deterministic:
        print("note: on a GPU some kernels are not deterministic, so two runs may part in the last bits; train with "
              "--deterministic for bit-identical GPU runs (slower; docs/reproducibility.md), or compare within a "
              "tolerance with --atol")
    if comparer.parted is not None:
        epoch, described, found = comparer.parted
        print(f"not reproduced: epoch {epoch}{_steps(plan, epoch)} differs first, in")
        for line in described:
            print(f"  {line}")
        for tensor, diff in found[:compare.SHOWN]:
            print(f"  max |difference| of {tensor}: {diff:.3g}")
        if comparer.identical:
            print(f"  ({_span(comparer.identical)} bit-identical before it)")
    elif not comparer.identical and not comparer.within:
        print(f"nothing compared: the original kept no fingerprints or checkpoint of {_span(comparer.unchecked)}")
    else:
        done = sorted(comparer.identical + list(comparer.within))
        what = f"{compare.object_names(comparer.objects)}: {plural(comparer.tensors, 'tensor')}"
        what += f"; {plural(comparer.metrics, 'metric')} of each epoch" if comparer.metrics else ""
        if comparer.within:
            worst = max(comparer.within.values())
            print(f"reproduced within --atol={plan.options.atol:g}: {_span(done)} (max |difference| {worst:.3g}; "
                  f"{what})")
        else:
            print(f"reproduced: {_span(done)} bit-identical ({what})")
    if changes:
        heading = "what differs now" if comparer.parted is not None else "what differs now (the numbers did not change)"
        print(f"{heading}:\n" + "\n".join(f"  {line}" for line in changes))
        if any(line.startswith("option ") for line in changes):
            print(f"  (the options are {plan.run_dir / 'config.yaml'}'s now, not those the run was trained with: "
                  f"edited after it began?)")
    elif changes is not None and comparer.parted is not None:
        print("nothing recorded in the manifest differs (code, packages, data, machine, threads): a source of "
              "randomness the runner does not control?")
    if comparer.parted is not None or (not comparer.identical and not comparer.within):
        raise NotReproduced("")


def _device(scratch):
    found = manifest.read(scratch) or {"environments": [{}]}
    return (found["environments"][-1] or {}).get("device", "")
