"""--loggers=wandb: a run is a Weights & Biases run in --wandb-project; a resume continues the
same run id; a sweep's trials share the study's name as their W&B group (docs/trackers.md).

Online when an API key is configured (WANDB_API_KEY, or `wandb login`'s ~/.netrc entry),
else offline: the run's files go to <run dir>/wandb/ and `wandb sync <run dir>/wandb/offline-run-*`
uploads them later. WANDB_MODE, when set, decides instead. W&B keeps one history row per step
and points cannot be taken back, so a resume does not send again the steps the killed attempt
had handed to W&B: their last one is kept in <run dir>/wandb/runner-last-step-<id> (written
as the steps go, without fsync: a killed process's writes are in the page cache).

wandb is imported here only, when a run asks for it (the trackers extra).
"""
import netrc
import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlparse

from utils.core.errors import UsageError, UserError, excerpt
from utils.core.registry import LOGGERS
from utils.loggers import record
from utils.loggers.base import Tracker, best_key, flat_config, one_line, trial_state

EXTRA = "bash scripts/setup.sh --trackers"
LAST_STEP = "runner-last-step"
PROJECT_FORBIDDEN = ("/", "\\", "#", "?", "%", ":")  # what W&B refuses in a project's name
EXIT_CODES = {"finished": 0, "pruned": 0, "stopped": 0, "crashed": 1}


def require():
    try:
        import wandb  # the trackers extra: imported only by a run that asks for W&B
    except ImportError:
        raise UserError(f"--loggers=wandb needs the wandb package, which is not installed; install the trackers "
                        f"extra with `{EXTRA}`") from None
    return wandb


def base_url():
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def mode():
    """online, offline (or disabled) as WANDB_MODE says; unset: online when an API key is
    configured, else offline, so a run never stops at a login prompt."""
    chosen = os.environ.get("WANDB_MODE", "").strip().lower()
    if chosen in ("online", "offline", "disabled"):
        return chosen
    if chosen == "dryrun":
        return "offline"
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        entry = netrc.netrc().authenticators(urlparse(base_url()).hostname or "")
    except (OSError, netrc.NetrcParseError):
        entry = None
    return "online" if entry else "offline"


@LOGGERS.register("wandb")
class WandbLogger(Tracker):
    """The resolved config, scalars by step, image grids, texts, tables, the best metric and
    status in the summary, and files (config.yaml, manifest.json, best.pth with
    --log-checkpoints)."""

    name = "wandb"
    title = "W&B"

    @classmethod
    def connect(cls, cfg):
        bad = sorted(set(cfg.wandb_project or "") & set(PROJECT_FORBIDDEN))
        if bad or len(cfg.wandb_project or "") > 128:
            raise UsageError(f"option --wandb-project: a W&B project name has at most 128 characters and none of "
                             f"{' '.join(PROJECT_FORBIDDEN)}; got {excerpt(cfg.wandb_project)}")
        require()
        return mode()

    def __init__(self, run_dir, cfg, start):
        wandb = require()
        self.mode = start.connection or mode()
        super().__init__(run_dir, cfg, start)
        project = cfg.wandb_project or cfg.experiment
        kept = record.read(run_dir).get(self.name) or {}
        run_id = kept.get("id") if kept.get("project") == project else None
        resumed = run_id is not None
        run_id = run_id or secrets.token_hex(4)  # W&B ids: 8 characters of [0-9a-z]
        folder = run_dir / "wandb"
        folder.mkdir(exist_ok=True)
        self._mark_path = folder / f"{LAST_STEP}-{run_id}"  # per run: another --wandb-project starts afresh
        sweep = start.sweep or {}
        config = flat_config(cfg)
        if sweep:
            config.update({"trial": sweep["number"], **{f"trial.{k}": v for k, v in sweep["params"].items()}})
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False,
                                  disable_job_creation=True, init_timeout=60)
        try:
            self.run = wandb.init(project=project, id=run_id, resume="allow", dir=str(run_dir), mode=self.mode,
                                  name=cfg.env, group=sweep.get("study"), job_type="trial" if sweep else "train",
                                  config=config, tags=[cfg.experiment, str(cfg.model)], settings=settings,
                                  allow_val_change=True, reinit="create_new")
        except Exception as error:  # noqa: BLE001 - anything that stops W&B starting says so in one line
            raise UserError(f"cannot start W&B ({self.mode}, {base_url()}): {one_line(error)}; check the network and "
                            f"the API key, set WANDB_MODE=offline, or drop wandb from --loggers") from None
        record.keep(run_dir, self.name, {"project": project, "id": run_id, "mode": self.mode})
        last = max(self._read_mark(), (self.run.step - 1) if resumed else -1)
        self._last_step = self._skip_to = last
        self.file(run_dir / "config.yaml")

    def _read_mark(self):
        try:
            return int(self._mark_path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return -1

    def scalar(self, name, value, step):
        if step > self._skip_to:
            super().scalar(name, value, step)

    def _send_scalars(self, points):
        # W&B takes a step's row in one call, and the steps in order
        for step in sorted({step for _, _, step in points}):
            self.run.log({name: value for name, value, at in points if at == step}, step=step)
            self._mark(step)

    def _mark(self, step):
        """Steps before `step` are whole in W&B's hands: a resume skips them."""
        if step - 1 > self._last_step:
            self._last_step = step - 1
            self._mark_path.write_text(str(step - 1), encoding="utf-8")

    def _images(self, name, images, step, path):
        import wandb

        if path is not None and step > self._skip_to:
            self.run.log({name: wandb.Image(str(path))}, step=step)

    def _text(self, name, text, step, path):
        import wandb

        if step > self._skip_to:
            self.run.log({name: wandb.Html("<pre>" + _escape(text) + "</pre>")}, step=step)

    def _table(self, name, header, rows, step):
        import wandb

        if step > self._skip_to:
            self.run.log({name: wandb.Table(columns=[str(c) for c in header], data=rows)}, step=step)

    def _file(self, path, folder):
        # what lies in the run's files folder is uploaded with the run (wandb.save would link
        # it instead, and warn that a later change is not seen)
        path = Path(path)
        if path.is_file():
            shutil.copy2(path, Path(self.run.dir) / path.name)

    def _end(self, status, best):
        if status is None:
            self.run.finish(exit_code=0)
            return
        self.run.summary["status"] = status
        if best:
            self.run.summary[best_key(best["metric"])] = best["value"]
            self.run.summary["best_epoch"] = best["epoch"]
        if self.start.sweep is not None:
            self.run.summary["trial_state"] = trial_state(status, best)
        for name in ("manifest.json", "status.json"):
            self._file(self.run_dir / name, "")
        if self.cfg.log_checkpoints:
            self._file(self.run_dir / "best.pth", "")
        if status == "stopped":
            self.run.mark_preempting()  # W&B shows it preempted; a resume continues it
        self.run.finish(exit_code=EXIT_CODES[status])


def _escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def attach(ids, path, folder):
    """Upload file `path` to the W&B run `ids` names, online only (an offline run's folder is
    closed; `wandb sync` takes only what it held)."""
    if ids.get("mode") != "online" or mode() != "online":
        return False
    wandb = require()
    entity = os.environ.get("WANDB_ENTITY")
    path_of_run = "/".join(part for part in (entity, ids["project"], ids["id"]) if part)
    wandb.Api().run(path_of_run).upload_file(str(path), root=str(Path(path).parent))
    return True
