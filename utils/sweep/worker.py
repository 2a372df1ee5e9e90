"""`python main.py sweep`: one worker of an Optuna study whose trials are ordinary runs.

A worker repeats: take the study lock (a file beside the trials: utils/sweep/lock.py,
Optuna's symlink lock naming its holder, safe on NFS), look for a running trial whose lease is stale and take it
over, else ask the study for a new trial (a retry waiting in the queue first) unless the
study already holds --trials finished or running ones; write the trial's lease; release
the lock. Then it trains the trial in process with the engine (utils/engine/loop.py train),
reporting the metric at each epoch end to the pruner, and tells the study the result.
Counting and asking under one lock is what makes "exactly --trials" hold with any number of
workers, on one machine or many.

A trial is the run dir <checkpoint-dir>/<study>/trial-<number>, resumed like any run: a
worker that is killed leaves its trial running with a lease that stops being renewed, and
the next worker to look resumes it from last.pth, bit for bit. A stop that saved last.pth
(SIGTERM from a scheduler, Ctrl+C) releases the lease, so the requeued job continues at once.
A trial that raised an error is told FAILED with its message in the user attribute "error"
and queued again with the same parameters up to --retries times; three failed trials in a
row stop the worker (the cause is likely not the parameters).

Seeds: trial n trains with a seed derived from (--seed, n); the sampler drawing trial n is
seeded from (--seed, trials in the study so far), so a study run by one worker is the same
study every time. Under torchrun, rank 0 talks to the study and every rank trains the trial
it chose.
"""
import contextlib
import logging
import time
import typing
from pathlib import Path

import optuna
from optuna.trial import TrialState

from configs.loader import load_config
from utils.core import seeding
from utils.core.errors import UsageError, UserError, plural
from utils.core.shell import main_command
from utils.cv import group as cv_group
from utils.cv import is_group
from utils.engine import distributed, runtime
from utils.engine import loop as engine
from utils.engine.safe_stop import Stopped
from utils.loggers import sweeps
from utils.sweep import coordination, joining
from utils.sweep.hooks import STORAGE_ERRORS, HandedBack, TrialHooks
from utils.sweep.hooks import first_line as _first_line
from utils.sweep import lease as leases
from utils.sweep.journal import repair
from utils.sweep.report import best_trial, params_text, render_summary
from utils.sweep.study import JOURNAL, check_study_dir, read_record, state_counts, trial_dir
from utils.visualize import write_hparams

log = logging.getLogger(__name__)
FAILURES_IN_A_ROW = 3  # a worker stops after this many failed trials in a row


class Job(typing.NamedTuple):
    """A trial for this worker: the optuna Trial (rank 0's; None elsewhere), its number, its
    parameters, why it is taken over (None for a new one) and this worker's lease on it."""
    trial: object
    number: int
    params: dict
    took_over: object
    lease: object


class Worker:
    """One worker of study `options.study`: `base` is the config of the train options
    `flags` every trial gets, `space` the search space checked against it (space.py)."""

    def __init__(self, options, base, flags, space):
        self.options, self.base, self.flags, self.space = options, base, dict(flags), space
        self.study_dir = Path(self.base.checkpoint_dir) / options.study
        self.sampler_type, self.sampler_arguments = self.space.sampler
        self.pruner = _pruner(*self.space.pruner)
        self._sampler(0)  # a bad sampler argument fails here, before any trial
        self.study = self.coordination = None
        self.idle = (0, 0)  # (finished, running) when this worker found nothing more to start
        self.parents = {}  # {tracker: the study's parent run id} (utils/loggers/sweeps.py)

    # -- the study ----------------------------------------------------------------------------
    def open(self):
        """Create the study, or join it (utils/sweep/joining.py)."""
        self.study = joining.open_study(self.options, self.base, self.flags, self.space, self.pruner)
        self.coordination = coordination.of(self.study_dir, self.options.storage, self.options.stale_after,
                                            self.study._storage)
        if sweeps.nests(self.base):
            with self.coordination.lock():
                self.parents = sweeps.open_study(self.study_dir, self.base, self.options.study)
        return self

    def _sampler(self, seed_key):
        """The sampler that draws the next trial, seeded from (--seed, `seed_key`: the trials
        in the study so far). The grid's seed is --seed's alone: GridSampler shuffles the
        grid by it, and every instance (each ask, each worker) must see one order."""
        seed = seeding.derive_seed(self.base.seed, seeding.stream("sweep sampler"), seed_key) % 2**32
        try:
            if self.sampler_type == "grid":
                order = seeding.derive_seed(self.base.seed, seeding.stream("sweep grid")) % 2**32
                return _Grid(self.space.grid(), seed=order)
            if self.sampler_type == "random":
                return optuna.samplers.RandomSampler(seed=seed)
            return optuna.samplers.TPESampler(seed=seed, **self.sampler_arguments)
        except (ValueError, TypeError) as error:
            raise UsageError(f"--search-space={self.space.path}: sampler {self.sampler_type}: {error}") from None

    # -- choosing the next trial ----------------------------------------------------------------
    def next_job(self):
        """The next Job, or None when the study needs nothing more from this worker. Rank 0
        chooses; every rank gets its number, parameters and whether it resumes."""
        job = distributed.on_main(self._choose)
        shared = distributed.broadcast_object(None if job is None else (job.number, job.params, job.took_over))
        if shared is None:
            return None
        return job if distributed.is_main() else Job(None, *shared, None)

    def _choose(self):
        with self.coordination.lock():
            trials = self.study.get_trials(deepcopy=False)
            running = [frozen for frozen in trials if frozen.state == TrialState.RUNNING]
            holders = self.coordination.holders(running)
            for frozen in running:
                holder = holders[frozen.number]
                if not holder.stale:
                    continue
                lease = self.coordination.claim(frozen._trial_id, frozen.number, former=holder.record)
                if lease is None:
                    continue  # another worker took it over first
                self.study.sampler = self._sampler(len(trials))
                # Optuna's Trial of a trial that exists: the same object ask() returns
                # (FrozenTrial keeps the storage id only as _trial_id)
                trial = optuna.Trial(self.study, frozen._trial_id)
                params = self.space.suggest(trial)  # its own values (all drawn when it was asked)
                former, quiet = holder.record, holder.age
                if former is None:
                    why = "its worker stopped and released it"
                elif quiet is not None and quiet <= self.options.stale_after:
                    why = f"its worker, pid {former.get('pid')} on this machine, is gone"
                else:
                    why = f"its worker {former.get('host')} (pid {former.get('pid')}) was not heard from for {quiet:.0f} s"
                return Job(trial, frozen.number, params, why, lease)
            counts = state_counts(trials)
            finished = counts["complete"] + counts["pruned"]
            if finished + counts["running"] >= self.options.trials:  # a waiting trial (a retry) is asked for next
                self.idle = (finished, counts["running"])
                return None
            self.study.sampler = self._sampler(len(trials))
            trial = self.study.ask()  # a queued retry first, else a new trial
            params = self.space.suggest(trial)
            lease = self.coordination.claim(trial._trial_id, trial.number)
            return Job(trial, trial.number, params, None, lease)

    # -- running it -----------------------------------------------------------------------------
    def run(self):
        """Run trials until the study needs no more from this worker; returns how many ran."""
        ran, failed_in_a_row = 0, []
        while True:
            try:
                job = self.next_job()
            except STORAGE_ERRORS as error:
                done = "ran no trial" if not ran else f"stops between trials ({plural(ran, 'trial')} ran)"
                raise UserError(f"{_first_line(error)}; this worker {done}: fix that and run the sweep again") from None
            if job is None:
                break
            ran += 1
            error = self.run_trial(job)
            failed_in_a_row = failed_in_a_row + [error] if error else []
            if len(failed_in_a_row) >= FAILURES_IN_A_ROW:
                raise UserError(f"sweep {self.options.study}: the last {len(failed_in_a_row)} trials of this worker "
                                f"failed, the last with: {failed_in_a_row[-1]}; fix that and start the sweep again "
                                f"(`{main_command()} sweep --study={self.options.study} --summary` lists the trials)")
        if distributed.is_main() and self.parents:
            try:
                best = best_trial(self.study)
            except STORAGE_ERRORS:
                best = None  # the trials are told; the parent run's summary is extra
            sweeps.end_study(self.parents, self.base, self.space.metric, best.value if best else None,
                             best.number if best else None)
        if distributed.is_main():
            finished, running = self.idle
            others = (f", {running} still running in other workers (one whose worker is gone is taken over "
                      f"once its lease is {self.options.stale_after:g} s old: --stale-after)") if running else ""
            print(f"sweep {self.options.study}: {finished} of {self.options.trials} trials finished{others}; "
                  f"this worker ran {plural(ran, 'trial')}. Summary: {runtime.main_command()} sweep "
                  f"--study={self.options.study}{runtime.checkpoint_dir_flag(self.base)} --summary")
        return ran

    def trial_config(self, number, params, resume):
        """The Config of trial `number`: the sweep's train options, its parameters, its
        seed and run dir (--resume when its run dir holds a run)."""
        # --folds: every trial splits the data and starts its weights alike, so CV scores compare configurations
        seed = self.base.seed if self.base.folds else \
            seeding.derive_seed(self.base.seed, seeding.stream("sweep trial"), number) % 2**31
        return load_config({**self.flags, **sweeps.trial_options(self.base), **params, "seed": seed, "monitor": self.space.metric,
                            "env": f"trial-{number}", "checkpoint_dir": str(self.study_dir),
                            "resume": "last" if resume else ""})

    def run_trial(self, job):
        """Train one trial and tell the study; returns the error text of a failed trial."""
        trial, number, params, took_over, lease = job
        run_dir = trial_dir(self.study_dir, number)
        # A taken-over trial resumes when its run dir holds a run (its config.yaml is written
        # before anything else); one whose worker died before that starts afresh.
        resume = took_over is not None and ((run_dir / "config.yaml").is_file() or is_group(run_dir))
        shown = params_text(params)  # readable; the trial's config.yaml holds the exact values
        if distributed.is_main():
            how = f"resuming it ({took_over})" if resume else f"taking it over ({took_over})" if took_over else "new"
            log.info("sweep %s: trial %d, %s: %s", self.options.study, number, how, shown)
            former = getattr(lease, "former", None)  # a database study's: where its last worker ran it
            if took_over and not resume and former and former.get("run_dir") != str(run_dir.absolute()):
                log.warning("sweep %s: trial %d starts again from its first epoch (same parameters and seed): its run "
                            "dir %s:%s is not reachable from here", self.options.study, number, former.get("host"),
                            former.get("run_dir"))
            lease.start()
        hooks = TrialHooks(trial, self.space.metric, lease, self.space.pruner[0], runtime.command_again(),
                           {"study": self.options.study, "number": number, "params": params, "parents": self.parents})
        try:
            try:
                outcome = self.train(self.trial_config(number, params, resume), hooks)
            except (Stopped, KeyboardInterrupt) as stop:
                if lease is not None:
                    lease.release()  # last.pth is saved: the next worker resumes it at once
                if isinstance(stop, Stopped) and getattr(lease, "outage", None):  # the database was gone too long
                    raise UserError(f"{lease.outage}; trial {number} saved its last.pth in {run_dir} and this worker "
                                    f"stops: run the same command again once the database answers, and it resumes "
                                    f"the trial") from None
                raise
            except leases.LeaseLost as error:
                lease.stop()
                if distributed.world_size() > 1:
                    raise  # the other ranks are inside this trial still; torchrun ends them
                log.warning("%s", error)
                return None
            except (*STORAGE_ERRORS, HandedBack):
                raise
            except Exception as error:  # noqa: BLE001 - a trial's failure is recorded, the sweep goes on
                text = _first_line(error)
                if not isinstance(error, UserError):
                    log.exception("trial %d failed with an unexpected error", number)
                if distributed.is_main():
                    self._tell_failed(trial, number, params, text)
                    lease.release()
                return text
            if distributed.is_main():
                try:
                    lease.check()  # a worker that was frozen past --stale-after tells nothing of a trial now another's
                except leases.LeaseLost as error:
                    lease.stop()
                    log.warning("%s", error)
                    return None
                self._tell(trial, number, params, outcome)
                lease.release()
            return None
        except (*STORAGE_ERRORS, HandedBack) as error:
            if lease is not None:
                with contextlib.suppress(OSError):
                    lease.release()  # RUNNING without a lease: the next worker resumes it at once
            raise HandedBack(f"{_first_line(error)}; trial {number} is handed back (what it saved is kept): fix that "
                             f"and run the sweep again, which resumes it") from None

    def train(self, cfg, hooks):
        """Train a trial: one run, or with --folds a cross-validation group ranked by its
        out-of-fold metric (utils/cv), which the pruner sees after each fold."""
        if not cfg.folds:
            return engine.train(cfg, trial=hooks)
        done = cv_group.train(cfg, {}, trial=hooks)
        best = cv_group.objective(done["summary"]) if done["summary"] else None
        return {"run_dir": done["group_dir"], "epoch": cfg.max_epoch, "best": best, "pruned": done["pruned"]}

    def _tell(self, trial, number, params, outcome):
        best, pruned = outcome["best"], outcome["pruned"]
        if pruned:
            self.study.tell(number, state=TrialState.PRUNED)  # Optuna keeps its last reported value
            state, value = "pruned", (best or {}).get("value")
        elif best is None:
            trial.set_user_attr("error", f"no finite {self.space.metric} in {outcome['epoch']} epochs")
            self.study.tell(number, state=TrialState.FAIL)
            state, value = "failed", None
        else:
            self.study.tell(number, best["value"])
            state, value = "complete", best["value"]
        write_hparams(outcome["run_dir"], params, {f"hparam/{self.space.metric}": value} if value is not None else {},
                      state)
        # the one line that says a trial was pruned, and why (the engine leaves it to the sweep)
        said = pruned if pruned else state + (f", {self.space.metric} {value:.4f}" if value is not None else "")
        log.info("sweep %s: trial %d %s", self.options.study, number, said)

    def _tell_failed(self, trial, number, params, text):
        trial.set_user_attr("error", text)
        self.study.tell(number, state=TrialState.FAIL)
        retries = int(trial.user_attrs.get("retries", 0)) if trial.user_attrs else 0
        if retries < self.options.retries:
            self.study.enqueue_trial(params, user_attrs={"retry_of": number, "retries": retries + 1})
            again = f"; queued again with the same parameters (retry {retries + 1} of {self.options.retries})"
        else:
            again = f"; not retried (--retries={self.options.retries})"
        log.error("sweep %s: trial %d failed: %s%s", self.options.study, number, text, again)


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its study.stop() once every point has run: stop() works
    only inside study.optimize, and a worker stops at --trials, which read_space keeps within
    the grid."""

    def after_trial(self, study, trial, state, values):
        pass


def _pruner(kind, arguments):
    try:
        if kind == "none":
            return optuna.pruners.NopPruner()
        if kind == "hyperband":
            return optuna.pruners.HyperbandPruner(**arguments)
        return optuna.pruners.MedianPruner(**arguments)
    except (ValueError, TypeError) as error:
        raise UsageError(f"pruner {kind}: {error}") from None


def main(options, base, flags, space):
    """The sweep command, once main.py has checked the options and the search space: run
    this worker (or print the summary)."""
    study_dir = Path(base.checkpoint_dir) / options.study
    if options.summary:
        print(render_summary(study_dir, options.storage, options.stale_after))
        return
    if options.repair:
        check_study_dir(study_dir)
        saved = read_record(study_dir)
        if saved is not None and saved["storage"] != JOURNAL:
            raise UsageError(f"study {options.study} keeps its trials in {saved['storage']}, not a journal file; "
                             f"--repair mends journal files only")
        busy = [run_dir.name for run_dir in sorted(study_dir.glob("trial-*"))
                if (run_dir / leases.LEASE).exists() and not leases.is_stale(run_dir, options.stale_after)]
        if busy:  # a running worker keeps byte offsets into the journal that a rewrite would shift
            raise UserError(f"study {options.study} has running workers ({busy[0]} holds a live lease); stop them "
                            f"before --repair")
        print(repair(study_dir / JOURNAL))
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log says what happens to each trial
    worker = Worker(options, base, flags, space)
    distributed.on_main(worker.open)
    start = time.perf_counter()
    worker.run()
    log.info("sweep %s: this worker's part took %.0f s", options.study, time.perf_counter() - start)
