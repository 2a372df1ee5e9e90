"""A newcomer's first hour: the README's commands in the order written, on a fresh copy of the
repository, and the messages that tell them what to do next."""
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, make_dogcat, next_lines, run_cli, tiny_flags, typed


def readme_commands():
    """`main.py` command lines of the README's Set-up and demo sections, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set-up")[1].split("## Data sets")[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = line.split("#")[0].split("&&")[-1].strip()
            if "main.py" in line:
                words = shlex.split(line)
                commands.append(words[words.index("main.py") + 1:])
    return commands


def fresh_copy(target):
    """The tracked files of the repository (no generated data, no runs, no venv)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


@pytest.mark.slow
def test_readme_commands_work_in_the_order_written(tmp_path):
    commands = readme_commands()
    assert [c[:1] for c in commands] == [["train"], ["test"], ["val"], ["runs"], ["train"], ["generate"], ["train"], ["generate"]]
    repo = fresh_copy(tmp_path / "repo")
    told = {}
    for args in commands:
        if args[0] == "train":
            args = [*args, "--max-epoch=1", "--progress=false"]
        command = [sys.executable, str(repo / "main.py"), *args]
        if any(arg.startswith("--env=") for arg in args) and args[0] != "train":
            # train said to run exactly this, and it runs as printed, venv activated or not
            printed = told[shlex.join(args)]
            command = shlex.split(printed)
        result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert "WARNING" not in result.stderr, result.stderr  # the demo warns about nothing of its own
        if args[0] == "train":
            for line in next_lines(result.stdout):
                told[line.split(" main.py ", 1)[-1]] = line
    assert told["runs"] == f"{typed('python', cwd=repo)} main.py runs"  # works as printed, venv activated or not
    labels = [row.split(",")[1] for row in (repo / "checkpoints" / "demo" / "result.csv").read_text().splitlines()[1:]]
    assert len(labels) == 60 and all("0.005000" <= label <= "0.995000" for label in labels)  # --clip's default
    assert (repo / "checkpoints" / "gan-demo" / "result.png").is_file()
    assert (repo / "checkpoints" / "poet" / "result.txt").read_text(encoding="utf-8").strip()  # a poem, after 1 epoch
    assert not (repo / "result.csv").exists() and not (repo / "result.png").exists()  # each run's outputs in its folder


def test_train_says_what_next_and_config_yaml_reproduces_the_run(tmp_path):
    make_dogcat(tmp_path / "data")
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="first"))
    assert result.returncode == 0, result.stderr
    assert "WARNING skipped 1 entry in " in result.stderr and " that is not cat.<n>.jpg" in result.stderr  # .DS_Store
    runs = tmp_path / "runs"
    main = typed()
    assert next_lines(result.stdout) == [  # one per line, in the README's order
        f"{main} test --env=first --checkpoint-dir={runs}", f"{main} val --env=first --checkpoint-dir={runs}",
        f"{main} runs --checkpoint-dir={runs}", f"{typed('tensorboard')} --logdir {runs}"]
    header = (runs / "first" / "config.yaml").read_text().splitlines()[0]
    command = header.split("Reproduce it in a new run dir: ")[1]
    assert command == f"python main.py train --config={runs}/first/config.yaml --env=first-again"
    again = run_cli(*shlex.split(command)[2:])
    assert again.returncode == 0, again.stderr
    first, second = (torch.load(runs / env / "last.pth", weights_only=True) for env in ("first", "first-again"))
    assert all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])

    # test --env predicts the run's own --test-data-root (7 images here, not the demo's 60)
    tested = run_cli("test", "--env=first", f"--checkpoint-dir={runs}", f"--result-file={tmp_path / 'r.csv'}")
    assert tested.returncode == 0, tested.stderr
    assert tested.stdout.strip() == f"wrote 7 rows to {tmp_path / 'r.csv'}"
    # without --result-file the csv goes into the run's folder (another run's test cannot overwrite it)
    default = run_cli("test", "--env=first", f"--checkpoint-dir={runs}")
    assert default.returncode == 0 and default.stdout.strip() == f"wrote 7 rows to {runs / 'first' / 'result.csv'}"
    # the start-up log: what the user set and what came from the data, not every option
    config = [line for line in result.stderr.splitlines() if " INFO config" in line]
    assert len(config) == 2 and all(len(line) < 600 for line in config), config
    assert config[0].split(" INFO ")[1].startswith("config: you set --checkpoint-dir=") and " --model=LeNet " in config[0]
    assert config[1].split(" INFO ")[1] == "config from the data: --num-classes=2"

    # --resume of a finished run: exit 0, and how to go on
    finished = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="first", resume="true"))
    assert finished.returncode == 0, finished.stderr
    assert (f"run first has finished: 1 of --max-epoch=1 epochs done, nothing to resume. Train it further: "
            f"{main} train --env=first --checkpoint-dir={runs} --resume --max-epoch=2") in finished.stdout

    # best.pth is for inference: weights, config and metrics; last.pth is complete
    best, last = (torch.load(runs / "first" / name, weights_only=True) for name in ("best.pth", "last.pth"))
    assert set(best) == {"model", "kind", "epoch", "global_step", "best", "metrics", "config", "experiment", "format_version", "info"}
    assert {"optimizer", "lr_policy", "rng", "window"} <= set(last)
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert best["metrics"]["val_logloss"] == best["best"]["value"]


def test_runs_lists_every_run_with_its_state(tmp_path):
    make_dogcat(tmp_path / "data")
    data = tmp_path / "data"
    assert run_cli("train", *tiny_flags(data, tmp_path, env="done")).returncode == 0
    stopped = run_cli("train", *tiny_flags(data, tmp_path, env="stopped", **{"max-epoch": 3}),
                      env={"RUNNER_FAULT_AT_STEP": "7:SIGINT"})
    assert stopped.returncode == 130, stopped.stderr
    nan = run_cli("train", *tiny_flags(data, tmp_path, env="nan", **{"max-epoch": 3}), env={"RUNNER_FAULT_AT_STEP": "7:nan"})
    assert nan.returncode == 1, nan.stderr
    killed = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "train",
                               *tiny_flags(data, tmp_path, env="killed", **{"max-epoch": 3})],
                              env=dict(os.environ, RUNNER_FAULT_AT_STEP="7:SIGKILL"), cwd=ROOT)
    killed.wait(timeout=300)
    table = run_cli("runs", f"--checkpoint-dir={tmp_path / 'runs'}")
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.strip().splitlines()[1:]}
    assert table.stdout.split()[:8] == ["env", "experiment", "model", "epochs", "best", "state", "size", "updated"]
    assert re.match(r"done +classify +LeNet +1/1 +val_logloss \d\.\d{4} \(epoch 1\) +finished +\d+\.\d [KM]B", rows["done"])
    assert re.match(r"stopped +classify +LeNet +1/3 +val_logloss .* stopped ", rows["stopped"])
    assert re.match(r"nan +classify +LeNet +1/3 .* crashed ", rows["nan"])  # last.pth of epoch 1 kept
    assert re.match(r"killed +classify +LeNet +1/3 .* killed ", rows["killed"])
    assert set(rows) == {"done", "stopped", "nan", "killed"}


@pytest.mark.registry
def test_help_of_a_command_shows_that_command_only_with_its_experiments_defaults():
    for command, first in (("train", "--experiment"), ("test", "--env"), ("generate", "--experiment")):
        result = run_cli(command, "--help")
        lines = result.stdout.splitlines()
        assert result.returncode == 0 and lines[0] == f"python main.py {command}:", lines[:3]
        assert lines[-1] == "every option with its type, default and doc, and every registered name: python main.py help"
        assert len(lines) < 60, len(lines)  # readable without scrolling; `help` has the rest
        options = [line.split()[0] for line in lines if line.startswith("    --")]
        assert options[0] == first, options
    assert "--result-file" in run_cli("test", "--help").stdout
    assert "--result-file" not in run_cli("train", "--help").stdout
    generate = run_cli("generate", "--help").stdout
    # generate is the gan's: its defaults and its options, and the --experiment it needs
    assert "    --experiment       string = 'gan' (give it: the default is 'classify')" in generate
    assert re.search(r"--image-size +integer\|none = 32\n", generate) is None  # train's option, not generate's
    assert "    --nz " in generate and "--ngf" in generate
    gan_train = run_cli("train", "--experiment=gan", "--help").stdout
    assert re.search(r"--train-data-root +string = 'data/faces_sample'", gan_train), gan_train
    assert "(experiment gan has no val: add --experiment=classify)" in run_cli("val", "--experiment=gan", "--help").stdout


def test_a_python_without_the_packages_is_told_the_set_up_in_one_line(tmp_path):
    """`python3 main.py train` outside the venv: one line naming what to run, not a traceback
    of a ModuleNotFoundError; `help` and `<command> --help` need none of the packages."""
    bare = [sys.executable, "-S"]  # no site-packages: a Python without the runner's packages
    result = subprocess.run([*bare, str(ROOT / "main.py"), "train"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: this Python ({sys.executable}) lacks fire, ")
    assert f"{ROOT / 'main.py'}" in result.stderr and ("scripts/setup.sh" in result.stderr or "/bin/python" in result.stderr)
    shown = subprocess.run([*bare, str(ROOT / "main.py"), "help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python main.py <command>"), shown.stderr
    own = subprocess.run([*bare, str(ROOT / "main.py"), "train", "--help"], capture_output=True, text=True, timeout=60)
    assert own.returncode == 0 and own.stdout.startswith("python main.py train:"), own.stderr


def test_a_closed_pipe_ends_quietly():
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "help"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, COLUMNS="80"))
    process.stdout.close()  # as `| head -1` does once it has its line (help fits in a pipe's buffer)
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and stderr == "", stderr


def test_output_files_follow_the_umask(tmp_path):
    make_dogcat(tmp_path / "data")
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path), umask=0o002)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "tiny"
    for name in ("config.yaml", "last.pth", "best.pth", "status.json"):
        assert oct((run_dir / name).stat().st_mode & 0o777) == oct(0o664), name
    result = run_cli("test", "--env=tiny", f"--checkpoint-dir={tmp_path / 'runs'}", f"--test-data-root={tmp_path / 'data/test'}",
                     f"--result-file={tmp_path / 'r.csv'}", umask=0o027)
    assert result.returncode == 0, result.stderr
    assert oct((tmp_path / "r.csv").stat().st_mode & 0o777) == oct(0o640)


def test_no_progress_bar_frames_without_a_terminal(tmp_path):
    make_dogcat(tmp_path / "data")
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, progress="true", **{"max-epoch": 2}))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "img/s]" not in result.stderr
    # one plain line per epoch, with the share of its time spent waiting for data
    assert re.search(r"INFO epoch 1/\d+: train loss \d\.\d{4} accuracy \d\.\d{4} \| val accuracy \d\.\d{4} logloss "
                     r"\d\.\d{4}( \| best)?\n", result.stderr)  # one of the two, val_loss left out (= logloss)
    assert re.search(r"INFO epoch 1/\d+: \d+ img/s \(\d+% waiting for data\) \| lr .* \| rss \d+ MB \| about \S+ left of "
                     r"the run\n", result.stderr)
    assert max(len(line) for line in result.stderr.splitlines() if " INFO epoch " in line) <= 120
    assert "waited" not in result.stderr
    # and, between them, progress lines at the --print-freq cadence (here every 2 of 4 steps)
    lines = re.findall(r"INFO epoch 1/1: (\d+)/16 img \((\d+)%\), loss \d\.\d{4} accuracy \d\.\d{4}, \d+ img/s, \d+s left in the "
                       r"epoch", run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="lines", **{"log-interval": 0})).stderr)
    assert lines == [("8", "50"), ("16", "100")], lines
    assert not re.search(r"epoch 1/1: \d+/16 img", result.stderr)  # by default at most one every 30 s
