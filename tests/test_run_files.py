"""Damaged run files (status.json, manifest.json, data-files.json.gz, a fingerprint record)
are one line naming the file and what is wrong, never a traceback: `runs` lists every other
run and marks the damaged one, `runs --diff` shows the rest, `reproduce` refuses before it
trains, and a resume either goes on (status.json, kept beside) or refuses with the fix."""
import gzip
import hashlib
import json
import shutil

import pytest

from conftest import make_dogcat, run_cli, tiny_flags
from utils.core.records import Damaged, Required, problem, read_json


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("damaged")
    make_dogcat(tmp_path / "data", per_class=8, test_images=2)
    result = run_cli("train", *tiny_flags(tmp_path / "data", tmp_path, env="good", **{"max-epoch": 2}))
    assert result.returncode == 0, result.stderr
    return tmp_path


def rewrite_json(path, change):
    document = json.loads(path.read_text())
    path.write_text(json.dumps(change(document)))


DAMAGES = {
    "status.json is [1]": ("status.json", lambda d: d.joinpath("status.json").write_text("[1]"),
                           "the file is [1], not a mapping"),
    "status.json best is text": ("status.json", lambda d: rewrite_json(d / "status.json", lambda s: {**s, "best": "x"}),
                                 "best is 'x', not null or a mapping"),
    "status.json restarts wrong": ("status.json", lambda d: rewrite_json(d / "status.json",
                                                                          lambda s: {**s, "restarts": [1]}),
                                   "restarts[0] is 1, not a mapping"),
    "manifest environments [1]": ("manifest.json", lambda d: rewrite_json(d / "manifest.json",
                                                                          lambda m: {**m, "environments": [1]}),
                                  "environments[0] is 1, not a mapping"),
    "manifest environments []": ("manifest.json", lambda d: rewrite_json(d / "manifest.json",
                                                                         lambda m: {**m, "environments": []}),
                                 "environments is empty: no block says what the run was trained with"),
    "manifest cut short": ("manifest.json", lambda d: d.joinpath("manifest.json").write_text(
        d.joinpath("manifest.json").read_text()[:300]), "not whole JSON: "),
    "fingerprint record": ("fingerprints/epoch-0001.json", lambda d: d.joinpath("fingerprints", "epoch-0001.json")
                           .write_text('{"epoch": 1, "objects": {"model": "x"}}'), "objects.model is 'x', not a mapping"),
    "data files": ("data-files.json.gz", lambda d: d.joinpath("data-files.json.gz").write_bytes(
        gzip.compress(b'{"0": [1, 2]}')), "0 is [1, 2], not a mapping"),
}


def damaged_copy(trained, case):
    name = "x-" + "".join(c if c.isalnum() else "-" for c in case)
    run_dir = trained / "runs" / name
    shutil.copytree(trained / "runs" / "good", run_dir)
    DAMAGES[case][1](run_dir)
    return run_dir


def tree(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_file_is_one_line_and_every_command_says_what_it_can(trained, case):
    file, _, why = DAMAGES[case]
    run_dir = damaged_copy(trained, case)
    damaged = (run_dir / file).read_bytes()
    named = f"{run_dir / file} is damaged ({why}"
    at = f"--checkpoint-dir={trained / 'runs'}"

    table = run_cli("runs", at)
    assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line and not line.startswith(("env ", "run "))}
    assert "good" in rows and run_dir.name in rows  # every run listed
    if file == "status.json":
        assert " damaged " in rows[run_dir.name] and f"run {run_dir.name}: {named}" in table.stdout
        assert "2/2" in rows[run_dir.name]  # what its checkpoint says

    diff = run_cli("runs", at, "--diff", "good", run_dir.name)
    assert diff.returncode == 0 and "Traceback" not in diff.stderr, diff.stderr
    if file != "status.json":
        assert f"not compared: {named}" in diff.stdout

    before = tree(run_dir)
    reproduce = run_cli("reproduce", at, f"--env={run_dir.name}")
    assert "Traceback" not in reproduce.stderr
    if file == "status.json":
        assert reproduce.returncode == 0, reproduce.stderr  # status.json plays no part in a reproduction
    else:
        assert reproduce.returncode == 1 and reproduce.stdout == ""
        [line] = [line for line in reproduce.stderr.splitlines() if line.startswith("error: ")]
        assert line.startswith(f"error: {named}") and line.endswith(")")
    assert tree(run_dir) == before

    resume = run_cli("train", *tiny_flags(trained / "data", trained, env=run_dir.name, **{"max-epoch": 3, "resume": "auto"}))
    assert "Traceback" not in resume.stderr
    if file in ("manifest.json", "data-files.json.gz"):  # what the resume extends: refused, nothing written
        assert resume.returncode == 1
        [line] = [line for line in resume.stderr.splitlines() if line.startswith("error: ")]
        assert line.startswith(f"error: {named}")
        assert line.endswith(f"); move it aside (mv {run_dir / file} {run_dir / file}.damaged) and the resume begins it "
                             f"anew")
        assert tree(run_dir) == before
        (run_dir / file).rename(run_dir / f"{file}.damaged")
        assert run_cli("train", *tiny_flags(trained / "data", trained, env=run_dir.name,
                                            **{"max-epoch": 3, "resume": "auto"})).returncode == 0
    else:
        assert resume.returncode == 0, resume.stderr
    if file == "status.json":  # written anew, the damaged one kept beside it
        assert f"{named}); kept as status.json.damaged, and the run's earlier restarts are not carried over" \
            in resume.stderr
        assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
        assert (run_dir / "status.json.damaged").read_bytes() == damaged


SHAPE = {"status": Required(str), "epoch": int, "best": (None, {"metric": Required(str), "value": Required(float)}),
         "restarts": [{"after": str}], "counts": {"*": int}}


@pytest.mark.parametrize("value, found", [
    ({"status": "finished", "epoch": 2, "best": None, "restarts": [], "counts": {"a": 1}, "other": [1]}, None),
    ({"status": "finished", "best": {"metric": "loss", "value": 3}}, None),  # an int is a number
    ([1], "the file is [1], not a mapping"),
    ({"epoch": 2}, "the file has no 'status'"),
    ({"status": "x", "epoch": True}, "epoch is true, not a whole number"),
    ({"status": "x", "epoch": 1.5}, "epoch is 1.5, not a whole number"),
    ({"status": "x", "best": "x"}, "best is 'x', not null or a mapping"),
    ({"status": "x", "best": {"metric": "loss"}}, "best has no 'value'"),
    ({"status": "x", "best": {"metric": "loss", "value": "low"}}, "best.value is 'low', not a number"),
    ({"status": "x", "restarts": {"after": "x"}}, 'restarts is {"after": "x"}, not a list'),
    ({"status": "x", "restarts": [{"after": 3}]}, "restarts[0].after is 3, not a text"),
    ({"status": "x", "counts": {"a": "1"}}, "counts.a is '1', not a whole number"),
])
def test_a_shape_names_what_is_wrong_and_where(value, found):
    assert problem(value, SHAPE) == found


def test_a_file_that_is_missing_is_none_and_one_that_is_not_json_is_damaged(tmp_path):
    assert read_json(tmp_path / "none.json", SHAPE) is None
    (tmp_path / "cut.json").write_text('{"status": "fin')
    with pytest.raises(Damaged, match=r"cut.json is damaged \(not whole JSON: unterminated string starting at; cut short "
                                      r"or edited\?\); fix it"):
        read_json(tmp_path / "cut.json", SHAPE, fix="; fix it")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(Damaged, match=r"folder.json is damaged \(it is a folder\)"):
        read_json(tmp_path / "folder.json", SHAPE)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(Damaged, match="binary.json is damaged"):
        read_json(tmp_path / "binary.json", SHAPE)
