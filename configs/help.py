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


def render_help(width=None):
    """The full help text."""
    from configs.loader import experiment_defaults
    from utils.registry import ALL, EXPERIMENTS, display_name

    width = width or min(shutil.get_terminal_size((100, 20)).columns, 120)
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
        defaults = " ".join(f"{flag(k)}={_show_default(v)}" for k, v in experiment_defaults(experiment).items())
        if defaults:
            lines += textwrap.wrap(f"defaults: {defaults}", width, initial_indent="    ", subsequent_indent=" " * 14)
    lines += [f"  help      {HELP_COMMAND}"]
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
        for f in fields:
            if f.metadata["group"] != group:
                continue
            lines.append(f"    {flag(f.name):<{name_width}}  {describe_type(f.name)} = {_show_default(f.default)}")
            lines += textwrap.wrap(f.metadata["doc"], width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    lines += ["", "registered names (add one: a file in the package + @REGISTRY.register()):"]
    for table in ALL:
        names = ", ".join(display_name(n) for n in table.names()) or "(none yet)"
        lines += textwrap.wrap(f"{table.name} ({table.location}): {names}", width, initial_indent="  ", subsequent_indent="      ")
    lines += [
        "",
        "examples:",
        "  python main.py train                                  # the embedded smoke demo",
        "  python main.py train --config=configs/dogcat.yaml --model=ResNet34 --lr=1e-3",
        "  python main.py test --load-model-path=checkpoints/<env>/best.pth",
        "  python main.py train --experiment=gan                  # the DCGAN on its embedded sample",
        "  python main.py generate --experiment=gan --env=<run>   # best-scored faces -> result.png",
    ]
    return "\n".join(lines)
