"""`python main.py help`: the commands, every option and every registered name, all generated
from the schema and the registries (no torch import, so it answers in a blink)."""
import shutil
import textwrap

from configs.loader import defaults_for, experiment_defaults
from configs.values import TYPE_NAMES, describe_type, flag
from configs.schema import FIELDS, GROUPS, experiment_fields, fields_of
from configs.commands import COMMANDS
from utils.core.registry import ALL, EXPERIMENTS, display_name

TYPE_WIDTH = 22  # the type = default column of `help`; a longer one pushes its doc along
HELP_COMMAND = "print this text (also: no command, -h, --help, <command> --help)"


def _show_default(value):
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    return str(value)


# The shared options `<command> --help` shows first, chosen by what a user reaches for with
# the command (not by where they are declared); the experiment's own options follow.
# Any other command of an experiment (generate, ...) shows OTHER_COMMAND's.
COMMAND_OPTIONS = {
    "train": ("experiment", "env", "resume", "config", "dataset", "train_data_root", "test_data_root", "model", "image_size",
              "max_epoch", "batch_size", "lr", "lr_policy", "device", "num_workers", "print_freq", "loggers",
              "checkpoint_dir"),
    "val": ("env", "load_model_path", "checkpoint_dir", "batch_size", "num_workers", "device", "skip_bad_images"),
    "test": ("env", "load_model_path", "checkpoint_dir", "test_data_root", "batch_size", "device", "skip_bad_images",
             "experiment"),
    "runs": ("checkpoint_dir",),
}
OTHER_COMMAND = ("experiment", "env", "load_model_path", "checkpoint_dir", "seed", "device")
RUNS_COMMAND = ("a table of the runs under --checkpoint-dir: env, experiment, model, epochs, best metric, state, size; "
                "then the sweeps' studies: trials by state, best value and parameters. `runs --diff <run> <other run>`: "
                "the options and manifest items (code, packages, data, machine, threads) that differ, each run's best "
                "metric, and the first epoch at which their fingerprints part")

def _table_lines(options, width):
    """A registered command's own options (configs/commands.py), as `_option_lines` shows the
    schema's."""
    name_width = max(len(flag(name)) for name in options)
    lines = []
    for name, (kind, default, doc) in options.items():
        shown = "required" if default is None else _show_default(default)
        lines.append(f"    {flag(name):<{name_width}}  {TYPE_NAMES[kind]} = {shown}")
        lines += textwrap.wrap(doc, width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return lines


def _compact_lines(names, width, name_width, experiment=None):
    """One entry per option for `help`: flag, type = default, then the doc on the same line,
    wrapped under it (`<command> --help` keeps the roomier layout of _option_lines)."""
    fields = fields_of(experiment) if experiment else FIELDS
    lines = []
    for name in names:
        shown = f"{describe_type(name, experiment)} = {_show_default(fields[name].default)}"
        head = f"    {flag(name):<{name_width}}  {shown:<{TYPE_WIDTH}}  "
        lines += textwrap.wrap(head + fields[name].metadata["doc"], width, subsequent_indent=" " * 8,
                               break_on_hyphens=False)
    return lines


def _option_lines(names, width, name_width, defaults=None, notes=None, experiment=None):
    """One line per option when it fits, else two: flag, type = default (the experiment's,
    from `defaults`, where it sets one) and a note, then the doc's first line (cut at a word:
    `help` has it whole), so a command's list stays one screen."""
    fields = fields_of(experiment) if experiment else FIELDS
    defaults, notes = defaults or {}, notes or {}
    lines = []
    for name in names:
        f = fields[name]
        default = defaults.get(name, f.default)
        shown = f"{describe_type(name, experiment)} = {_show_default(default)}{notes.get(name, '')}"
        head = f"    {flag(name):<{name_width}}  {shown}"
        if len(f"{head}  {f.metadata['doc']}") <= width:
            lines.append(f"{head}  {f.metadata['doc']}")
        else:
            lines += [head, textwrap.shorten(f.metadata["doc"], width, initial_indent=" " * 8, placeholder=" ...")]
    return lines


def _experiments_with(command):
    """{experiment: the method `command` runs} for every experiment that has `command`."""
    found = {}
    for experiment in EXPERIMENTS.names():
        commands = EXPERIMENTS.declared(experiment, "commands") or {}
        target = (EXPERIMENTS.declared(experiment, "aliases") or {}).get(command, command)
        if target in commands:
            found[experiment] = target
    return found


def target_of(experiment, command):
    """The command `command` names in `experiment` (an alias's target, else itself)."""
    return (EXPERIMENTS.declared(experiment, "aliases") or {}).get(command, command)


def command_help(command, width=None, experiment=None):
    """`<command> --help`: what the command does, then its options with the defaults of the
    experiment it runs (--experiment when given, else the one experiment that has the
    command, else the default one) and that experiment's own options; last, a pointer to
    `help` for the rest. Short enough to read without scrolling."""
    width = width or min(shutil.get_terminal_size((100, 20)).columns, 120)
    having = _experiments_with(command)
    default = FIELDS["experiment"].default
    if experiment is None:
        experiment = default if default in having or not having else next(iter(having))
    lines = [f"python main.py {command}:"]
    if command in COMMANDS:
        registered = COMMANDS[command]
        lines += textwrap.wrap(registered.summary, width, initial_indent="  ", subsequent_indent="    ")
        lines += ["", f"  {registered.heading}:", *_table_lines(registered.options, width), "", *registered.notes]
        return lines + ["", "every option with its type, default and doc, and every registered name: python main.py help"]
    if command == "runs":
        lines += textwrap.wrap(RUNS_COMMAND, width, initial_indent="  ", subsequent_indent="    ")
    # The experiment it runs, and the others that have it by name only: the text stays one
    # screen however many experiments there are.
    if experiment in having:
        doc = (EXPERIMENTS.declared(experiment, "commands") or {})[having[experiment]]
        lines += textwrap.wrap(f"{experiment}: {doc}", width, initial_indent="  ", subsequent_indent="    ")
        others = [name for name in having if name != experiment]
        if others:
            lines += textwrap.wrap(f"({', '.join(others)} {'has' if len(others) == 1 else 'have'} it too: "
                                   f"--experiment=<name> --help shows theirs)", width, initial_indent="  ",
                                   subsequent_indent="    ")
    elif having:
        lines.append(f"  (experiment {experiment} has no {command}: add --experiment={next(iter(having))})")
    names = list(COMMAND_OPTIONS.get(command, OTHER_COMMAND))
    if command != "runs" and experiment in having:
        target = target_of(experiment, command)
        names += [name for name, f in experiment_fields(experiment).items()  # its own options for this command
                  if name not in names and (not f.metadata["commands"] or target in f.metadata["commands"])]
    if names:
        defaults = defaults_for(experiment) if command != "runs" else {}
        notes = {}
        if experiment != default and command != "runs":
            defaults["experiment"] = experiment
            notes["experiment"] = f" (give it: the default is {default!r})"
        lines += ["", f"  options ({'experiment ' + experiment + ', ' if command != 'runs' else ''}defaults as shown):"]
        lines += _option_lines(names, width, max(len(flag(n)) for n in names), defaults, notes,
                               experiment if command != "runs" else None)
    return lines + ["", "every option with its type, default and doc, and every registered name: python main.py help"]


def render_help(width=None, command=None):
    """The full help text; with `command`, that command's part first."""
    width = width or min(shutil.get_terminal_size((100, 20)).columns, 120)
    if command and command != "help":
        return "\n".join(command_help(command, width))
    lines = [
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
        defaults = " ".join(f"{flag(k)}={_show_default(v)}" for k, v in experiment_defaults(experiment).items()
                            if k != "monitor" or k in (EXPERIMENTS.declared(experiment, "defaults") or {}))
        if defaults:
            lines += textwrap.wrap(f"defaults: {defaults}", width, initial_indent="    ", subsequent_indent=" " * 14)
    listed = [(name, registered.summary) for name, registered in COMMANDS.items()]
    for name, text in (*listed, ("runs", RUNS_COMMAND), ("help", HELP_COMMAND)):
        lines += textwrap.wrap(f"{name:<9} {text}", width, initial_indent="  ", subsequent_indent=" " * 12)
    lines += [
        "",
        "options: schema defaults < the experiment's defaults < --config=FILE.yaml < flags.",
        "Hyphens or underscores alike (--batch-size or --batch_size); booleans take",
        "true/false/yes/no/1/0, a bare flag is true, --no-<flag> is false; 'none' clears an",
        "option that may be empty.",
    ]
    name_width = max(len(flag(name)) for name in FIELDS)
    for group in GROUPS:
        lines += ["", f"  {group}:"]
        lines += _compact_lines([name for name, f in FIELDS.items() if f.metadata["group"] == group], width, name_width)
    for experiment in EXPERIMENTS.names():
        own = experiment_fields(experiment)
        if own:
            lines += ["", f"  options of experiment {experiment} (with --experiment={experiment}):"]
            lines += _compact_lines(list(own), width, name_width, experiment=experiment)
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
        *(f"  {example}" for registered in COMMANDS.values() for example in registered.examples),
        "  python main.py runs                                   # every run: epochs, best, state, size",
    ]
    return "\n".join(lines)
