"""The options of `python main.py lr-find` itself; every other flag is a train option (the
model, the data, --optimizer, --batch-size, --param-groups, --freeze, --pretrained, ...).
`help` reads this table without importing torch."""
import dataclasses

from configs.commands import register_command
from configs.values import split_command_flags
from utils.core.errors import UsageError

# {name: (type, default, doc)}
OPTIONS = {
    "steps": (int, 100, "optimizer steps of the test (one batch each); the train split must have this many batches"),
    "start_lr": (float, 1e-7, "the lr of the first step"),
    "end_lr": (float, 10.0, "the lr of the last step (the test ends earlier when the loss diverges)"),
    "plot": (str, "", "the PNG to write (loss against lr, the suggestion marked; a .csv of the points beside it); "
                      "default lr-find.png here, or in <checkpoint-dir>/<env>/ when --env is given"),
}
MIN_STEPS, MAX_STEPS = 10, 100000

register_command(
    "lr-find",
    "the learning-rate range test: train a fresh copy of the model for --steps batches while the lr grows from "
    "--start-lr to --end-lr, print the suggested lr and write a plot (loss against lr); no run dir unless --env",
    OPTIONS, "options of lr-find (and every train option: the model, data, optimizer and parameter groups to test)",
    notes=("  the suggestion is the lr where the smoothed loss falls fastest, before its minimum; the plot also",
           "  marks a tenth of the minimum's lr. Examples:",
           "    python main.py lr-find --model=ResNet34 --batch-size=32",
           "    python main.py lr-find --model=torchvision.resnet18 --pretrained=weights.pth --param-groups='fc=10'"),
    examples=("python main.py lr-find --model=ResNet34   # suggest an lr, plot in lr-find.png",))


@dataclasses.dataclass(frozen=True)
class LrFindOptions:
    steps: int
    start_lr: float
    end_lr: float
    plot: str


def split_options(flags):
    """(LrFindOptions, the train flags) of lr-find's flags {name: text}."""
    values, rest = split_command_flags(flags, OPTIONS)
    if not MIN_STEPS <= values["steps"] <= MAX_STEPS:
        raise UsageError(f"lr-find --steps must be within {MIN_STEPS}..{MAX_STEPS} (a few hundred is usual), got "
                         f"{values['steps']}")
    start, end = values["start_lr"], values["end_lr"]
    if not 0 < start < end <= 1e6:
        raise UsageError(f"lr-find needs 0 < --start-lr < --end-lr <= 1e6, got {start:g} and {end:g}")
    if end / start < 10:
        raise UsageError(f"lr-find: --start-lr={start:g} to --end-lr={end:g} is less than a factor of 10; the test "
                         f"spans decades (the defaults: 1e-7 to 10)")
    return LrFindOptions(**values), rest
