"""Command-line glue: `python main.py train|val|test|help [--option=value ...]`.

fire dispatches the command; every value reaches us as text (fire's literal guessing is
switched off with SetParseFn(str)) and the config schema types it. What a command does
lives in experiments/. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""
import logging
import sys

COMMANDS = ("train", "val", "test", "help")
HELP_TOKENS = ("help", "-h", "--help")


def train(*args, **flags):
    """Train a model; writes <checkpoint-dir>/<env>/."""
    _run("train", args, flags)


def val(*args, **flags):
    """Print validation metrics of a checkpoint."""
    _run("val", args, flags)


def test(*args, **flags):
    """Write the Kaggle submission csv for the test folder."""
    _run("test", args, flags)


def help(*args, **flags):  # noqa: A001 - the command is called help, as in the book
    """Print every command and option."""
    from configs.help import render_help

    print(render_help())


def _run(command, args, flags):
    from configs.loader import Text, load_config
    from utils.errors import UsageError
    from utils.registry import EXPERIMENTS

    if args:
        raise UsageError(
            f"unexpected argument {args[0]!r}: options are written --name=value "
            f"(e.g. --model={args[0]}); `python main.py help` lists them"
        )
    cfg = load_config({key: Text(value) for key, value in flags.items()})
    experiment = EXPERIMENTS.get(cfg.experiment)
    getattr(experiment, command)(cfg)


def main(argv=None):
    """Run the CLI on `argv` (default sys.argv[1:]) and return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in HELP_TOKENS or any(token in ("-h", "--help") for token in argv):
        help()
        return 0
    from utils.errors import UserError, did_you_mean

    if argv[0] not in COMMANDS:
        hint = did_you_mean(argv[0], COMMANDS)
        print(f"error: unknown command {argv[0]!r}{hint} Commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2

    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    as_text = fire.decorators.SetParseFn(str)  # the schema types values, not fire
    commands = {"train": as_text(train), "val": as_text(val), "test": as_text(test), "help": help}
    try:
        fire.Fire(commands, command=argv, name="main.py")
    except UserError as error:
        print(f"{error.prefix}{error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except fire.core.FireExit as exit_:
        return exit_.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
