"""Command-line glue: `python main.py <command> [--option=value ...]`.

Each experiment declares its commands (classify: train, val, test; gan: train, generate,
with test as another name for generate); `help` lists them. fire dispatches the command;
every value reaches us as text (fire's literal guessing is switched off with
SetParseFn(str)) and the config schema types it. `train` is the engine's (utils/engine/loop.py),
the other commands are the experiment's methods. Exit codes: 0 ok, 1 runtime failure,
2 usage or config error (or a Python without the runner's packages), 130 interrupted
(SIGINT), 143 terminated (SIGTERM), 128 + N stopped by --requeue-signal N. Under torchrun
every process runs this same command (utils/engine/distributed.py).
"""
import importlib.util
import logging
import os
import sys
from pathlib import Path

from configs.help import command_help, render_help
from configs.loader import commands_of, load_config, read_yaml
from configs.loader import given_names as names_typed
from configs.values import Text
from utils.core.errors import UsageError, UserError, did_you_mean, excerpt, shorten
from utils.core.registry import EXPERIMENTS
from utils.core.shell import main_command, typed
from utils.cv import is_group
from utils.engine import distributed, run_lock, runtime
from utils.caches import options as cache_options  # each registers its command's help (configs/commands.py)
from utils.export import options as export_options
from utils.lr_find import options as lr_find_options
from utils.reproduce import options as reproduce_options
from utils.runs import render
from utils.sweep import options as sweep_options

HELP_TOKENS = ("help", "-h", "--help")


def help(*args, **flags):  # noqa: A001 - the command is called help, as in the book
    """Print every command and option."""
    print(render_help())


def runs(*args, **flags):
    """Print a table of the runs under --checkpoint-dir, or how two runs differ (--diff A B)."""
    diff = flags.pop("diff", None)
    if diff is not None:
        pair = [str(diff), *map(str, args)] if diff is not True else list(map(str, args))
        if len(pair) != 2:
            raise UsageError(f"runs --diff takes two runs: {main_command()} runs --diff <run> <other run>")
    elif args:
        raise UsageError(f"unexpected argument {args[0]!r}: runs takes --checkpoint-dir=<folder> and --diff <run> <run>")
    unknown = sorted(set(flags) - {"checkpoint_dir", "checkpoint-dir"})
    if unknown:
        raise UsageError(f"runs takes --checkpoint-dir=<folder> and --diff <run> <run>; got --{unknown[0].replace('_', '-')}")
    cfg = load_config({key: Text(value) for key, value in flags.items()})
    if diff is not None:
        from utils.reproduce.run_diff import render as render_diff  # yaml and json, no torch

        print(render_diff(cfg.checkpoint_dir, *pair))
        return
    print(render(cfg.checkpoint_dir))


def sweep(*args, **flags):
    """Run trials of an Optuna study (README: Sweeps); every other flag is a train option."""
    if args:
        raise UsageError(f"unexpected argument {args[0]!r}: options are written --name=value; "
                         f"`{main_command()} sweep --help` lists the sweep's own")
    # here, not at the top: space.py loads yaml, which `help` does without
    from utils.sweep.space import given_names, read_space

    options, train_flags = sweep_options.split_options(flags)
    train_flags = {key: Text(value) if isinstance(value, str) else value for key, value in train_flags.items()}
    cfg = load_config(train_flags)
    # a bad search space is one line, before torch or optuna load
    space = None if options.summary or options.repair else read_space(options.search_space, cfg,
                                                                      given_names(train_flags), options.trials)

    def work():
        from utils.sweep import worker  # torch and optuna

        worker.main(options, cfg, train_flags, space)

    _in_processes(cfg, work)


def export(*args, **flags):
    """Export a run's model to ONNX or torch.export after a parity check (README: Export)."""
    if args:
        raise UsageError(f"unexpected argument {args[0]!r}: options are written --name=value; "
                         f"`{main_command()} export --help` lists them")
    options, run_flags = export_options.split_options(flags)
    run_flags = {key: Text(value) if isinstance(value, str) else value for key, value in run_flags.items()}
    cfg = load_config(run_flags)
    if not cfg.env and not cfg.load_model_path:
        raise UsageError("export needs a run: give --env=<run name> (a folder under --checkpoint-dir) or "
                         "--load-model-path=<checkpoint.pth>")
    if distributed.launched():
        raise UsageError("export writes one file from one checkpoint: run it without torchrun")
    if options.output:
        runtime.check_output_file(options.output, "--output")  # a bad path fails before torch loads

    def work():
        from utils.export import exporter  # torch

        exporter.main(options, cfg, run_flags)

    _in_processes(cfg, work)


def cache(*args, **flags):
    """Build, list or clear decoded-image caches (README: Decode once)."""
    if args:
        raise UsageError(f"unexpected argument {args[0]!r}: options are written --name=value; "
                         f"`{main_command()} cache --help` lists them")
    options, run_flags = cache_options.split_options(flags)
    cfg = load_config({key: Text(value) if isinstance(value, str) else value for key, value in run_flags.items()})

    def work():
        from utils.caches import command  # torch

        command.main(options, cfg)

    _in_processes(cfg, work)


def lr_find(*args, **flags):
    """The learning-rate range test: suggest an lr and plot loss against lr (docs/fine-tuning.md)."""
    if args:
        raise UsageError(f"unexpected argument {args[0]!r}: options are written --name=value; "
                         f"`{main_command()} lr-find --help` lists them")
    options, run_flags = lr_find_options.split_options(flags)
    cfg = load_config({key: Text(value) if isinstance(value, str) else value for key, value in run_flags.items()})

    def work():
        from utils.lr_find import command  # torch, matplotlib

        command.main(options, cfg)

    _in_processes(cfg, work)


def reproduce(*args, **flags):
    """Train a run again in a scratch run dir and compare it bit for bit (README: Reproducibility)."""
    if args:
        raise UsageError(f"unexpected argument {args[0]!r}: options are written --name=value; "
                         f"`{main_command()} reproduce --help` lists them")
    options, run_flags = reproduce_options.split_options(flags)
    from utils.reproduce.plan import prepare  # reads yaml and json, no torch

    named = {str(key).replace("-", "_"): Text(value) if isinstance(value, str) else value
             for key, value in run_flags.items() if str(key).replace("-", "_") in ("env", "checkpoint_dir")}
    # A sweep's trial is --env=<study>/trial-<n>: the run trial-<n> in the study's folder.
    study, _, trial = str(named.get("env") or "").rpartition("/")
    if study:
        named["env"] = Text(trial)
        named["checkpoint_dir"] = Text(str(Path(str(named.get("checkpoint_dir") or "checkpoints")) / study))
    plan = prepare(options, load_config(named), {k: v for k, v in run_flags.items()
                                                 if str(k).replace("-", "_") not in named}, study)

    def work():
        from utils.reproduce import rerun  # torch

        rerun.main(plan)

    _in_processes(plan.cfg, work)


def experiment_commands(name):
    """{command: method name} of experiment `name`, read from its source (no import)."""
    commands = {command: command for command in EXPERIMENTS.declared(name, "commands") or {}}
    commands.update(EXPERIMENTS.declared(name, "aliases") or {})
    return commands


def all_commands():
    found = {}
    for name in EXPERIMENTS.names():
        found.update(experiment_commands(name))
    return [*found, "export", "reproduce", "sweep", "cache", "lr-find", "runs", "help"]


def _run(command, args, flags):
    if args:
        raise UsageError(
            f"unexpected argument {args[0]!r}: options are written --name=value "
            f"(e.g. --model={args[0]}); `{main_command()} help` lists them"
        )
    cfg = load_config({key: Text(value) for key, value in flags.items()})
    commands = experiment_commands(cfg.experiment)
    if command not in commands:
        raise UsageError(f"experiment {cfg.experiment} has no command {command!r}; its commands: {commands_of(cfg.experiment)}"
                         f"{_run_hint(cfg, command)}")

    # a cross-validation group (utils/cv): --folds, or --env naming one (a sweep's <study>/trial-<n> too)
    group = bool(cfg.env) and (is_group(cfg.run_dir) or (bool(cfg.folds) and "/" not in cfg.env))
    if command == "train" and cfg.env and not distributed.launched() and not group:
        runtime.check_new_run(cfg)  # a run dir that holds a run: refused in a blink, before torch loads

    def work():
        if group and command in ("train", "val", "test"):
            from utils.cv import ensemble, group as cv_group

            if command == "train":
                cv_group.train(cfg, flags, given=names_typed(flags, cfg))
            else:
                getattr(ensemble, command)(cfg)
            return
        if command == "train":
            from utils.engine import loop as engine

            engine.train(cfg, given=names_typed(flags, cfg))
            return

        getattr(EXPERIMENTS.get(cfg.experiment)(cfg), commands[command])()

    _in_processes(cfg, work)


def _in_processes(cfg, work):
    """work() with this process's threads set and, under torchrun, inside the process group,
    which every rank leaves together on an agreed error."""
    runtime.prepare_threads()  # before torch is imported
    distributed.setup(cfg)  # joins the process group under torchrun; nothing otherwise
    runtime.apply_threads(cfg)
    runtime.apply_determinism(cfg)
    try:
        work()
    except UserError as error:
        if getattr(error, "agreed", False):
            distributed.leave_together()
        raise
    except (MemoryError, RuntimeError) as error:
        # a batch or model larger than the machine (--hidden-dim=10**9), a peer process lost
        # under torchrun: one line, not a traceback
        one_line = runtime.out_of_memory(error) or distributed.lost_peer(error)
        if one_line is None:
            raise
        raise one_line from None
    finally:
        distributed.shutdown()


def _run_hint(cfg, command):
    """How to reach `command`: the experiment of the --env run when it has it, else help."""

    saved = Path(cfg.checkpoint_dir) / (cfg.env or "") / "config.yaml"
    experiment = str(read_yaml(saved).get("experiment") or "") if cfg.env and saved.is_file() else ""
    if experiment and command in experiment_commands(experiment):
        return f"; run {cfg.env} is a {experiment} run: add --experiment={experiment}"
    return f" (pick another with --experiment; `{main_command()} help` lists them)"


def _command(name):
    def command(*args, **flags):
        _run(name, args, flags)

    command.__name__ = name
    return command


def main(argv=None):
    """Run the CLI on `argv` (default sys.argv[1:]) and return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe could not be handled
        return code
    except BrokenPipeError:
        # The reader went away (`python main.py runs | head`): say nothing more, exit as a
        # process killed by SIGPIPE would (128 + 13), without a traceback at interpreter exit.

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        run_lock.release_all()  # a run dir a command wrote into is free for the next writer


# What every command needs, by import name (requirements.txt pins them); `help` needs none.
REQUIRED = ("fire", "yaml", "torch", "torchvision", "numpy", "tqdm", "torchnet", "tensorboardX", "matplotlib")


def _not_set_up():
    """One line when this Python lacks the runner's packages (run outside the venv, or before
    the set-up): which ones, and the command that fixes it. None when all are there."""
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    here = Path(__file__).resolve().parent
    venv_python, command = here / ".venv" / "bin" / "python", f"{typed(here / '.venv' / 'bin' / 'python')} {typed(__file__)}"
    fix = (f"run {command} (or `source {typed(venv_python.parent / 'activate')}` first)" if venv_python.exists() else
           f"set it up once with `bash {typed(here / 'scripts' / 'setup.sh')}` (about 2 minutes), then run {command}")
    return f"error: this Python ({sys.executable}) lacks {', '.join(missing)}; {fix}"


def _given_twice(tokens):
    """'option --batch-size is given twice (16, then 4); give it once' for the first option
    the command line names twice (fire would take the last without a word, while a YAML
    file's duplicate keys are refused), or None. --x and --no-x are the same option."""
    seen = {}
    for index, token in enumerate(tokens):
        if not token.startswith("--") or token == "--":
            continue
        name, has_value, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if not has_value:
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            value = "false" if name.startswith("no_") else following if following and not following.startswith("--") \
                else "true"
        name = name[3:] if name.startswith("no_") else name
        if name in seen:
            return (f"option --{name.replace('_', '-')} is given twice ({shorten(seen[name], 40)}, then "
                    f"{shorten(value, 40)}); give it once")
        seen[name] = value
    return None


def _main(argv):
    if not argv or argv[0] in HELP_TOKENS:
        print(render_help())
        return 0
    commands = all_commands()
    if argv[0] not in commands:
        hint = did_you_mean(argv[0], commands)
        print(f"error: unknown command {excerpt(argv[0])}{hint} Commands: {', '.join(commands)}.", file=sys.stderr)
        return 2
    if any(token in ("-h", "--help") for token in argv):
        chosen = [token.split("=", 1)[1] for token in argv if token.startswith("--experiment=")]
        print("\n".join(command_help(argv[0], experiment=chosen[-1] if chosen else None)))
        return 0
    # fire reads `-lr=0.1` as `--lr=0.1`; a one-dash option is more often a typo than a
    # habit, and taking it silently would hide the next typo too.
    single = next((token for token in argv[1:] if len(token) > 1 and token[0] == "-" and token[1] != "-"
                   and not token[1].isdigit()), None)
    if single:
        print(f"error: option {shorten(single)} has one dash; options take two: -{shorten(single)}", file=sys.stderr)
        return 2
    twice = _given_twice(argv[1:])
    if twice:
        print(f"error: {twice}", file=sys.stderr)
        return 2
    not_set_up = _not_set_up()  # help and <command> --help need no package; the commands do
    if not_set_up:
        print(not_set_up, file=sys.stderr)
        return 2

    # A bare --no-<flag> means --<flag>=false; fire would read it as its own --no<name> and pass
    # the option '-<flag>' on.
    argv = [argv[0]] + [f"--{token[5:]}=false" if token.startswith("--no-") and "=" not in token else token
                        for token in argv[1:]]
    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    as_text = fire.decorators.SetParseFn(str)  # the schema types values, not fire
    table = {name: as_text(_command(name)) for name in commands
             if name not in ("help", "runs", "sweep", "export", "reproduce", "cache", "lr-find")}
    table["help"] = help
    table["runs"] = as_text(runs)
    table["sweep"] = as_text(sweep)
    table["export"] = as_text(export)
    table["reproduce"] = as_text(reproduce)
    table["cache"] = as_text(cache)
    table["lr-find"] = as_text(lr_find)
    try:
        fire.Fire(table, command=argv, name="main.py")
    except UserError as error:

        # Under torchrun rank 0 says what every rank agreed on (a stop, a NaN); another
        # rank's own error names its rank.
        if str(error) and (distributed.is_main() or not getattr(error, "agreed", False)):
            print(f"{distributed.rank_prefix()}{error.prefix}{error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except fire.core.FireExit as exit_:
        return exit_.code
    return 0


if __name__ == "__main__":
    distributed.end_process(main())
