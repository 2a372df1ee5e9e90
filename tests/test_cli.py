"""main.py as a user meets it: help variants, exit codes and one-line errors."""
import re
import subprocess
import sys

import pytest

from configs.schema import FIELDS
from conftest import ROOT, run_cli
from utils.core.registry import ALL


@pytest.mark.registry
@pytest.mark.parametrize("args", [[], ["help"], ["-h"], ["--help"]])  # `<command> --help`: tests/test_newcomer.py
def test_help_everywhere_lists_every_option_and_registered_name(args):
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in result.stdout
    for table in ALL:
        assert f"{table.name} (" in result.stdout
    assert "ResNet34" in result.stdout and "dogcat" in result.stdout and "classify" in result.stdout
    assert "integer = 32" in result.stdout  # --batch-size: type and default
    assert "NAME" not in result.stdout and "SYNOPSIS" not in result.stdout  # not fire's help


def experiment_section(text, name):
    """The lines `help` shows under "  <name>:" in its commands, up to the next entry at that
    indent (another experiment or a command of no experiment)."""
    lines = text.split("\n")
    start = lines.index(f"  {name}:") + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("   "))
    return "\n".join(lines[start:end])


@pytest.mark.registry
def test_help_lists_each_experiments_commands_and_defaults():
    result = run_cli("help")
    classify, gan, poetry = (experiment_section(result.stdout, name) for name in ("classify", "gan", "poetry"))
    assert [line.split()[0] for line in classify.splitlines() if line.startswith("    ") and line[4] != " "] == ["train", "val", "test"]
    assert [line.split()[0] for line in gan.splitlines() if line.startswith("    ") and line[4] != " "] == \
        ["train", "generate", "test", "defaults:"]
    assert "    test      the same as generate" in gan
    assert [line.split()[0] for line in poetry.splitlines() if line.startswith("    ") and line[4] != " "] == \
        ["train", "generate", "test", "defaults:"]
    assert "defaults: --dataset='faces' --train-data-root='data/faces_sample' --model='NetG' --image-size=32" in result.stdout


def test_help_and_config_errors_do_not_import_heavy_packages(tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "last.pth").write_bytes(b"a run")
    code = (
        "import sys, main, contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()): main.main(['help'])\n"
        "with contextlib.redirect_stdout(io.StringIO()): main.main(['generate', '--help'])\n"
        "with contextlib.redirect_stderr(io.StringIO()): main.main(['train', '--lrr=1'])\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err: code = main.main(['train', '--env=taken', "
        f"'--checkpoint-dir={tmp_path / 'runs'}'])\n"
        "print(code, 'already holds a run' in err.getvalue())\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'tensorboardX', 'torchnet') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.split("\n")[:2] == ["2 True", "[]"], result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--lrr=0.1"], r"error: unknown option --lrr; did you mean --lr"),
        (["train", "--batch-size=32.0"], r"error: option --batch-size expects an integer, got '32.0'"),
        (["train", "--model=ResNet43"], r"error: option --model: unknown model 'ResNet43'"),
        (["train", "ResNet34"], r"error: unexpected argument 'ResNet34': options are written --name=value"),
        (["trian"], r"error: unknown command 'trian'; did you mean train\?"),
        (["trian", "--help"], r"error: unknown command 'trian'; did you mean train\?"),
        (["train", "--config=/nonexistent.yaml"], r"error: config file '/nonexistent.yaml' not found"),
        (["test"], r"error: give --load-model-path=<checkpoint.pth> or --env=<run name>"),
        (["train", "--resume"], r"error: --resume needs --env=<run name>"),
        (["generate"], r"error: experiment classify has no command 'generate'; its commands: train, val, test "),
        (["val", "--experiment=gan"], r"error: experiment gan has no command 'val'; its commands: train, generate, "
                                      r"test \(= generate\)"),
        (["train", "--model=NetG"], r"error: --model=NetG is not a classifier \(it takes no num_classes\)"),
        (["train", "--experiment=gan", "--model=LeNet"], r"error: --model=LeNet is not a generator \(it takes no nz, ngf"),
        (["generate", "--experiment=gann"], r"error: option --experiment: unknown experiment 'gann'.*closest: gan"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_runtime_user_error_exits_1_without_traceback(tmp_path):
    result = run_cli("train", f"--train-data-root={tmp_path}/missing", f"--checkpoint-dir={tmp_path}", "--env=x")
    assert result.returncode == 1
    assert re.search(r"error: data folder '.*missing' does not exist; it should hold cat.<n>.jpg", result.stderr)
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()  # a run that cannot start leaves no run dir behind


def test_val_of_an_unknown_run_says_where_it_looked(tmp_path):
    result = run_cli("val", "--env=nope", f"--checkpoint-dir={tmp_path}")
    assert result.returncode == 1
    assert f"error: no checkpoint in {tmp_path}/nope (looked for best.pth, last.pth)" in result.stderr



def test_a_new_run_on_a_stopped_runs_env_says_how_to_continue_it(tmp_path):
    """Not finished (stopped, crashed, or no status.json): the resume command; finished: how
    to train it further (tests/test_classify.py)."""
    import json

    from configs import load_config
    from utils.core.errors import UsageError
    from utils.engine import runtime

    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    (run_dir / "last.pth").write_bytes(b"")
    (run_dir / "status.json").write_text(json.dumps({"status": "stopped", "epoch": 1, "max_epoch": 3}))
    cfg = load_config({"env": "stopped", "checkpoint_dir": str(tmp_path)})
    with pytest.raises(UsageError, match=rf"{run_dir} already holds a run; continue it with `.*main.py train --env=stopped "
                                         rf"--checkpoint-dir={tmp_path} --resume`, or start a new one with another --env$"):
        runtime.check_new_run(cfg)
    (run_dir / "status.json").write_text("{not json")
    with pytest.raises(UsageError, match="continue it with"):
        runtime.check_new_run(cfg)
