"""`python main.py help`: the commands, every option and every registered name, all generated
from the schema and the registries (no torch import, so it answers in a blink)."""
import dataclasses
import shutil
import textwrap

from configs.loader import describe_type, flag
from configs.schema import GROUPS, Config

HELP_COMMAND = "print this text (also: no command, -h, --help, <command> --help)"


def _show_default(value):
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    return str(value)


# What `<command> --help` shows first, before every option.
COMMAND_OPTIONS = {
    "train": ("experiment", "env", "resume", "config", "dataset", "train_data_root", "model", "max_epoch", "batch_size", "lr",
              "device", "num_workers", "checkpoint_dir"),
    "val": ("env", "load_model_path", "checkpoint_dir", "tta", "batch_size", "num_workers", "device", "skip_bad_images"),
    "test": ("env", "load_model_path", "checkpoint_dir", "test_data_root", "result_file", "clip", "tta", "batch_size",
             "device", "skip_bad_images", "experiment"),
    "generate": ("experiment", "env", "load_model_path", "checkpoint_dir", "gen_img", "gen_num", "gen_search_num",
                 "gen_mean", "gen_std", "seed", "device"),
    "runs": ("checkpoint_dir",),
}
RUNS_COMMAND = "a table of the runs under --checkpoint-dir: env, experiment, model, epochs, best metric, state, size"


def _option_lines(names, width, name_width):
    fields = {f.name: f for f in dataclasses.fields(Config)}
    lines = []
    for name in names:
        f = fields[name]
        lines.append(f"    {flag(name):<{name_width}}  {describe_type(name)} = {_show_default(f.default)}")
        lines += textwrap.wrap(f.metadata["doc"], width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return lines


def command_help(command, width):
    """The lines `<command> --help` shows before the full help."""
    from utils.registry import EXPERIMENTS

    docs = [] if command != "runs" else [RUNS_COMMAND]
    for experiment in EXPERIMENTS.names():
        commands = EXPERIMENTS.declared(experiment, "commands") or {}
        target = (EXPERIMENTS.declared(experiment, "aliases") or {}).get(command, command)
        if target in commands:
            docs.append(f"{experiment}: {commands[target]}")
    lines = [f"python main.py {command}:"]
    for doc in docs:
        lines += textwrap.wrap(doc, width, initial_indent="  ", subsequent_indent="    ")
    names = COMMAND_OPTIONS.get(command, ())
    if names:
        lines += ["", f"  the options {command} uses most:"]
        lines += _option_lines(names, width, max(len(flag(n)) for n in names))
    return lines + ["", "-" * min(width, 60), ""]


def render_help(width=None, command=None):
    """The full help text; with `command`, that command's part first."""
    from configs.loader import experiment_defaults
    from utils.registry import ALL, EXPERIMENTS, display_name

    width = width or min(shutil.get_terminal_size((100, 20)).columns, 120)
    lines = command_help(command, width) if command and command != "help" else []
    lines += [
        "usage: python main.py <command> [--experiment=<name>] [--option=value ...]",
        "",
        "commands, per experiment (--experiment, default classify):",
    ]
    for experiment in EXPERIMENTS.names():
        lines.append(f"  {experiment}:")
        for name, text in (EXPERIMENTS.declared(experiment, "commands") or {}).items():
            lines += textwrap.wrap(f"{name:<9} {text}", width, initial_indent="    ", subsequent_indent=" " * 14)
        for alias, name in (EXPERIMENTS.declared(experiment, "aliases") or {}).items():
            lines.append(f"    {alias:<9} the same as {name}")
        defaults = " ".join(f"{flag(k)}={_show_default(v)}" for k, v in experiment_defaults(experiment).items())
        if defaults:
            lines += textwrap.wrap(f"defaults: {defaults}", width, initial_indent="    ", subsequent_indent=" " * 14)
    for name, text in (("runs", RUNS_COMMAND), ("help", HELP_COMMAND)):
        lines += textwrap.wrap(f"{name:<9} {text}", width, initial_indent="  ", subsequent_indent=" " * 12)
    lines += [
        "",
        "options: schema defaults < the experiment's defaults < --config=FILE.yaml < flags.",
        "Hyphens or underscores alike (--batch-size or --batch_size); booleans take",
        "true/false/yes/no/1/0, a bare flag is true, --no-<flag> is false; 'none' clears an",
        "option that may be empty.",
    ]
    fields = dataclasses.fields(Config)
    name_width = max(len(flag(f.name)) for f in fields)
    for group in GROUPS:
        lines += ["", f"  {group}:"]
        lines += _option_lines([f.name for f in fields if f.metadata["group"] == group], width, name_width)
    lines += ["", "registered names (add one: a file in the package + @REGISTRY.register()):"]
    for table in ALL:
        names = ", ".join(display_name(n) for n in table.names()) or "(none yet)"
        lines += textwrap.wrap(f"{table.name} ({table.location}): {names}", width, initial_indent="  ", subsequent_indent="      ")
    lines += [
        "",
        "examples:",
        "  python main.py train --env=demo                       # the embedded smoke demo",
        "  python main.py train --config=configs/dogcat.yaml --model=ResNet34 --lr=1e-3",
        "  python main.py test --load-model-path=checkpoints/<env>/best.pth",
        "  python main.py train --experiment=gan                  # the DCGAN on its embedded sample",
        "  python main.py generate --experiment=gan --env=<run>   # best-scored faces -> result.png",
        "  python main.py runs                                   # every run: epochs, best, state, size",
    ]
    return "\n".join(lines)
