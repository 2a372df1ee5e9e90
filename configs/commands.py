"""Commands that belong to no experiment (sweep, export, ...) and have options of their own.

Each registers its help here from its own options module (utils/sweep/options.py,
utils/export/options.py), and main.py, which wires the commands, imports those modules. So
`help` (configs/help.py) lists whatever is registered and imports no command package: a new
command is its package plus one `register_command` call, and no edit here or in help.
"""
import dataclasses

COMMANDS = {}  # name -> Command, in the order registered (the order `help` lists them)


@dataclasses.dataclass(frozen=True)
class Command:
    """A command's help: `summary` is its line in `help`; `options` its own options
    {name: (type, default, doc)} (a default of None means required), shown under `heading` in
    `<command> --help`, followed by `notes` (lines); `examples` join `help`'s examples."""
    name: str
    summary: str
    options: dict
    heading: str
    notes: tuple = ()
    examples: tuple = ()


def register_command(name, summary, options, heading, notes=(), examples=()):
    """Register command `name`'s help (see Command); registering it again replaces it."""
    COMMANDS[name] = Command(name, summary, dict(options), heading, tuple(notes), tuple(examples))
    return COMMANDS[name]
