"""status.json read back: how a run stands (Outputs.write_status writes it), its shape
checked (utils/core/records.py), so a file edited by hand or cut short is one line naming
it, and `runs` shows every other run."""
from pathlib import Path

from utils.core.records import Required, read_json
from utils.engine.checkpoint import STATUS

BEST = {"metric": Required(str), "value": Required(float), "epoch": Required(int)}
RESTART = {"at": str, "after": str, "from": str, "world": (int, str), "torchrun_restart": str}
SHAPE = {"status": Required(str), "experiment": (str, None), "model": (str, None), "epoch": int, "step_in_epoch": int,
         "max_epoch": int, "global_step": int, "best": (None, BEST), "error": (str, None), "stopped_early": (str, None),
         "pruned": (str, None), "restarts": [RESTART], "pid": int, "host": str, "updated": str}


def read(run_dir, fix=""):
    """The run's status.json as a dict, None when it has none; records.Damaged when it is
    there but unusable (`fix`: what the caller's user can do about it, '; ...')."""
    return read_json(Path(run_dir) / STATUS, SHAPE, fix=fix)
