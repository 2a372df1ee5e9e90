"""The options of `python main.py sweep` itself. Every other flag is a train option, given to
every trial; `help` reads this table without importing torch or optuna."""
import dataclasses
import re

from configs.commands import register_command
from configs.values import flag, split_command_flags
from utils.core.errors import UsageError, excerpt

# {name: (type, default, doc)}; a default of None means the option must be given.
OPTIONS = {
    "study": (str, None, "the study's name; its folder <checkpoint-dir>/<study> holds one run dir per trial "
                         "(trial-<number>) and the Optuna journal"),
    "trials": (int, None, "run trials until the study holds this many finished ones (complete or pruned), counted "
                          "over every worker of the study"),
    "search_space": (str, None, "YAML file: the options to search (a range or a list of choices each), and "
                                "optionally metric, direction, sampler, pruner (README: Sweeps)"),
    "storage": (str, "", "Optuna storage URL for the study: postgresql://user@host/db shares it between machines "
                         "that share nothing else (bash scripts/setup.sh --postgres), sqlite:///study.db; default: "
                         "the journal file optuna.journal in the study's folder (no server; works on a shared "
                         "file system)"),
    "stale_after": (float, 300.0, "seconds a running trial's lease may go unrenewed before its worker counts as "
                                  "gone and another worker resumes the trial from its last.pth"),
    "retries": (int, 1, "times a trial that failed with an error runs again with the same parameters (0 = never)"),
    "summary": (bool, False, "print the study's trials sorted by the metric and the command that reproduces the "
                             "best one; run nothing"),
    "repair": (bool, False, "mend a damaged study journal: keep every readable record in order (the original is "
                            "saved beside it first) and say how many were dropped; run nothing"),
}
register_command(
    "sweep",
    "one worker of an Optuna study: trains trials (run dirs <checkpoint-dir>/<study>/trial-<n>, resumed after a kill) "
    "until the study holds --trials finished ones; start it on as many machines or GPUs as you like. Every other "
    "flag is a train option of every trial",
    OPTIONS, "options of the sweep itself (--summary and --repair need only --study)",
    notes=("  then any train option (python main.py train --help), e.g. --experiment, --config, --max-epoch;",
           "  every trial gets them, plus its parameters, a seed derived from --seed and its number, and",
           "  --monitor = the search space's metric. Example:",
           "    python main.py sweep --study=demo-sweep --trials=6 --search-space=configs/sweeps/demo.yaml --max-epoch=3"),
    examples=("python main.py sweep --study=demo-sweep --trials=6 --search-space=configs/sweeps/demo.yaml  # a study",))
MAX_STALE_AFTER = 30 * 24 * 3600.0  # a lease unheard of for a month: its worker is gone
_NAME = re.compile(r"[A-Za-z0-9_.@+=-]+")


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    study: str
    trials: int
    search_space: str
    storage: str
    stale_after: float
    retries: int
    summary: bool
    repair: bool


def split_options(flags):
    """(SweepOptions, the train flags) of the sweep command's flags {name: text}."""
    values, rest = split_command_flags(flags, OPTIONS)
    if values["storage"].lower() in ("none", "null"):
        values["storage"] = ""  # as for any option that may be empty: the default, the journal file
    if not values["study"]:
        raise UsageError("sweep needs --study=<name>: the folder under --checkpoint-dir that holds its trials")
    if not _NAME.fullmatch(values["study"]) or values["study"] in (".", "..") or len(values["study"]) > 200:
        raise UsageError(f"--study names a folder under --checkpoint-dir: letters, digits and _.@+=- only, at most 200 "
                         f"of them; got {excerpt(values['study'])}")
    if values["summary"] and values["repair"]:
        raise UsageError("give --summary or --repair, not both: repair first, then look")
    if values["repair"] and values["storage"]:
        raise UsageError("--repair mends the study's journal file; a --storage database is repaired with its own tools")
    if not values["summary"] and not values["repair"]:
        for name, value in (("trials", "<how many finished trials>"), ("search_space", "<file.yaml>")):
            if values[name] is None:
                raise UsageError(f"sweep needs {flag(name)}={value} (or --summary to show the study)")
        if values["trials"] < 1:
            raise UsageError(f"option --trials must be >= 1; got {values['trials']}")
    if not values["stale_after"] > 0:
        raise UsageError(f"option --stale-after must be > 0 seconds; got {values['stale_after']}")
    if values["stale_after"] > MAX_STALE_AFTER:
        raise UsageError(f"option --stale-after must be at most {MAX_STALE_AFTER:g} seconds (30 days); got "
                         f"{values['stale_after']:g}")
    if values["retries"] < 0:
        raise UsageError(f"option --retries must be >= 0; got {values['retries']}")
    for name in ("env", "resume"):
        if name in {str(key).replace("-", "_") for key in rest}:
            raise UsageError(f"sweep names and resumes its trials itself (<checkpoint-dir>/<study>/trial-<number>); "
                             f"drop {flag(name)}")
    return SweepOptions(**values), rest

