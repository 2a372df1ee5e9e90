"""The house: imports run one way with no circle, modules stay small, and a new experiment,
model or data set dropped in as files keeps every test that enumerates them green."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

# Lowest first: a module may import its own layer and the layers below, never one above
# (DESIGN.md: core <- engine <- sweep, export <- runs / CLI). Imports inside functions count.
LAYERS = (
    ("utils.core",),
    ("configs", "utils.tables", "utils.writers", "utils.meters", "utils.visualize", "utils.loggers"),
    ("data",),
    ("utils.engine",),
    ("models",),
    ("utils.export", "utils.caches", "utils.lr_find"),
    ("utils.cv",),
    ("experiments", "utils.sweep", "utils.reproduce"),
    ("utils.runs",),
    ("main",),
)
PACKAGES = ("main.py", "configs", "data", "experiments", "models", "utils")
MAX_LINES = 400


def project_modules():
    """{dotted name: path} of the runner's own modules."""
    found = {}
    for top in PACKAGES:
        paths = [ROOT / top] if top.endswith(".py") else sorted((ROOT / top).rglob("*.py"))
        for path in paths:
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(path, modules):
    """The project modules `path` imports anywhere in it (at the top or in a function)."""

    def owner(dotted):
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(owner(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.update(owner(f"{node.module}.{alias.name}") for alias in node.names)
    return found - {"", None}


def layer_of(name):
    if name in ("utils", "data", "models", "experiments", "configs"):
        return 0 if name == "utils" else layer_of(name + ".x")  # a package's __init__: its package's layer
    for index, prefixes in enumerate(LAYERS):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return index
    return None


def problems(graph):
    """What breaks the layering in `graph` {module: modules it imports}: modules in no
    layer, imports of a higher layer, and the first import circle found."""
    unplaced = [name for name in graph if layer_of(name) is None]
    if unplaced:
        return [f"give these modules a layer in tests/test_house.py LAYERS: {unplaced}"]
    found = sorted(f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
                   for name, targets in graph.items() for target in targets if layer_of(target) > layer_of(name))
    # Within a layer too: follow the imports depth-first; meeting a module still on the path is a circle.
    state, path = {}, []

    def visit(name):
        state[name] = "open"
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return "import circle: " + " -> ".join(path[path.index(target):] + [target])
            if target not in state:
                circle = visit(target)
                if circle:
                    return circle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            circle = visit(name)
            if circle:
                return found + [circle]
    return found


@pytest.mark.registry
def test_imports_run_one_way_and_form_no_circle():
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    assert "configs.help" in graph and "utils.engine.loop" in graph["utils.sweep.worker"]  # the walk sees the tree
    assert problems(graph) == []


def test_the_walk_sees_a_circle_and_an_upward_import(tmp_path):
    """The checks above, on made-up modules: each must see what it looks for."""
    (tmp_path / "a.py").write_text("def f():\n    from b import g\n")
    (tmp_path / "b.py").write_text("import a\n")
    modules = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert imports_of(modules["a"], modules) == {"b"} and imports_of(modules["b"], modules) == {"a"}
    circle = {"utils.engine.checkpoint": {"utils.engine.runtime"}, "utils.engine.runtime": {"utils.engine.checkpoint"}}
    assert problems(circle) == ["import circle: utils.engine.checkpoint -> utils.engine.runtime -> utils.engine.checkpoint"]
    upward = {"configs.help": {"utils.sweep.options"}, "utils.sweep.options": set()}
    assert problems(upward) == ["configs.help (1) imports utils.sweep.options (7)"]
    assert problems({"newpackage.x": set()})[0].startswith("give these modules a layer")


@pytest.mark.registry
def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(ROOT)): count for path in project_modules().values()
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these by concern (at most {MAX_LINES} lines each): {long}"


@pytest.mark.slow  # the enumerating tests once more, in a copy of the repository
def test_a_dropped_in_experiment_model_and_data_set_keep_the_suite_green(tmp_path):
    """tests/fixtures/toy holds an experiment, a model and a data set as a contributor would
    add them: copied into a copy of the repository, every test that enumerates experiments,
    models, data sets or options (marked `registry`) passes there unchanged."""
    from test_newcomer import fresh_copy

    repo = fresh_copy(tmp_path / "repo")
    toy = ROOT / "tests" / "fixtures" / "toy"
    added = [path.relative_to(toy) for path in toy.rglob("*.py")]
    for relative in added:
        assert not (repo / relative).exists(), f"{relative} exists already: rename the toy's file"
        shutil.copy2(toy / relative, repo / relative)
    listed = subprocess.run([sys.executable, "main.py", "help"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert "  denoise:" in listed.stdout and "ToyAutoEncoder" in listed.stdout and "patterns" in listed.stdout
    assert "ndjson" in listed.stdout  # the toy logger
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "registry", "-p", "no:cacheprovider",
                             "-n", "0", "tests"], cwd=repo, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " deselected" in result.stdout


def engine_names_used(path):
    """{'module.name'} of the engine names a file uses: `from utils.engine.M import name` and
    `M.name` after `from utils.engine import M`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used, modules = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("utils.engine"):
            for alias in node.names:
                if node.module == "utils.engine":
                    modules[alias.asname or alias.name] = alias.name
                else:
                    used.add(f"{node.module.rsplit('.', 1)[1]}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            used.add(f"{modules[node.value.id]}.{node.attr}")
    return used


@pytest.mark.registry
def test_experiments_use_only_the_engines_documented_names_and_no_other_experiment():
    """docs/extending.md's reference lists every engine name an experiment uses (with its
    module), and no experiment imports another: what an extender reads is the whole surface."""
    guide = (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
    modules = project_modules()
    experiments = {name for name, path in modules.items()
                   if name.startswith("experiments.") and "@EXPERIMENTS.register" in path.read_text(encoding="utf-8")}
    assert {"experiments.classify", "experiments.gan", "experiments.poetry"} <= experiments
    for name in sorted(experiments):
        imported = imports_of(modules[name], modules)
        assert not imported & (experiments - {name}), f"{name} imports another experiment: {imported & experiments}"
        for used in sorted(engine_names_used(modules[name])):
            module, attribute = used.split(".")
            documented = f"{module}.{attribute}" in guide or any(
                attribute in line and (f"utils.engine.{module}" in line or f"utils/engine/{module}.py" in line)
                for line in guide.splitlines())
            assert documented, f"{name} uses utils.engine.{used}, which docs/extending.md does not document"


def test_the_surface_check_sees_an_undocumented_name(tmp_path):
    (tmp_path / "x.py").write_text("from utils.engine import runtime\nfrom utils.engine.loop import run_epoch\n"
                                   "runtime.start_run(1)\n")
    assert engine_names_used(tmp_path / "x.py") == {"runtime.start_run", "loop.run_epoch"}
