"""The options of `python main.py reproduce` itself. Every other flag either names the run
(--env, --checkpoint-dir) or changes how the re-training executes (--threads, --num-workers,
--device, ...: the options a --resume may change, less those that change what is trained);
`help` reads this table without importing torch."""
import dataclasses

from configs.commands import register_command
from configs.schema import with_role
from configs.values import flag, split_command_flags
from utils.core.errors import UsageError

# {name: (type, default, doc)}
OPTIONS = {
    "epochs": (int, 1, "epochs to train again and compare, from the start or from --from"),
    "all": (bool, False, "train again every epoch the run recorded (instead of --epochs)"),
    "from": (str, "", "start from this checkpoint of the run (epoch_7.pth, last.pth: a name in the run dir, or a "
                      "path) instead of from its start: checks the tail of a long run without its head"),
    "keep": (bool, False, "keep the scratch run dir (<checkpoint-dir>/<run>.reproduce-<time>) instead of removing it"),
    "atol": (float, 0.0, "0 = bit for bit; else a tensor passes when |new - original| <= this everywhere, compared "
                         "where the run kept that epoch's checkpoint (--keep-checkpoints; GPU kernels that are not "
                         "deterministic)"),
}
# What a re-training may not be given: it would train something else than the run did.
FIXED = ("max_epoch", "load_model_path", "patience", "resume", "config", "test_data_root", "use_ema")

register_command(
    "reproduce",
    "train a run again in a scratch run dir and prove it bit-identical, epoch by epoch (its fingerprints), or say "
    "where it first differs and what changed since (code, packages, data, machine, threads); exit 0 reproduced, "
    "1 differs. The run's own files are never written",
    OPTIONS, "options of reproduce (and --env=<run>, or --env=<study>/trial-<n> for a sweep's trial)",
    notes=("  --threads, --num-workers, --device, --deterministic and the other options a --resume may change",
           "  may be given; by default the run's own thread count is used. Under torchrun, launch it as the",
           "  run was launched. Examples:",
           "    python main.py reproduce --env=<run>                  # its first epoch, bit for bit",
           "    python main.py reproduce --env=<run> --all            # every epoch it recorded",
           "    python main.py reproduce --env=<run> --from=epoch_7.pth --epochs=2",
           "    python main.py runs --diff <run> <other run>          # options, manifests, fingerprints"),
    examples=("python main.py reproduce --env=<run>                  # train it again, compare bit for bit",))


@dataclasses.dataclass(frozen=True)
class ReproduceOptions:
    epochs: int
    all: bool
    start: str  # --from
    keep: bool
    atol: float


def split_options(flags, experiment=None):
    """(ReproduceOptions, the run flags) of the reproduce command's flags {name: text}."""
    values, rest = split_command_flags(flags, OPTIONS)
    if values["epochs"] < 1:
        raise UsageError(f"--epochs={values['epochs']}: give 1 or more epochs to train again (or --all)")
    if not values["atol"] >= 0:
        raise UsageError(f"option --atol must be >= 0; got {values['atol']}")
    allowed = set(with_role("execution", experiment=experiment)) - set(FIXED)
    for key in rest:
        name = str(key).replace("-", "_")
        if name not in allowed and name not in ("env", "checkpoint_dir"):
            raise UsageError(f"{flag(name)}: reproduce trains the run's own config; it takes --env, --checkpoint-dir "
                             f"and how to execute ({', '.join(flag(k) for k in sorted(allowed - {'env', 'checkpoint_dir'}))})")
    values["start"] = values.pop("from")
    return ReproduceOptions(**values), rest
