"""Registries: name -> class/function tables, one per kind of thing a config can name.

Every registry of the project is declared at the bottom of this file. Adding a model (or
dataset, meter, experiment) is one new file in that package and one decorator:

    # models/my_net.py
    from utils.core.registry import MODELS

    @MODELS.register()           # registered as "MyNet"; or register("my-net")
    class MyNet(BasicModule): ...

Modules of a registry's package are imported on first lookup (auto-import), so no
`__init__.py` edit is needed. `names()` reads the package's source with `ast` instead of
importing it, which is how `python main.py help` and config validation list models without
paying for `import torch`.
"""
import ast
import functools
import importlib
import inspect
import pkgutil
from pathlib import Path

from utils.core.errors import UsageError, close_matches

_ROOT = Path(__file__).resolve().parents[2]
PATTERN_SUFFIX = ".*"  # "torchvision.*" registers a family: torchvision.resnet18, ...


class Registry:
    """A table of named objects of one kind, filled by `@REGISTRY.register()`."""

    def __init__(self, name, package):
        self.name = name  # "models": used in error messages and help
        self.package = package  # "models": imported on first lookup
        self.symbol = name.upper()  # "MODELS": how decorators refer to it, for the ast scan
        self._entries = {}
        self._imported = False

    @property
    def location(self):
        """Where its entries live, as a path a user can open: models/ or utils/meters.py."""
        base = self.package.replace(".", "/")
        return base + ".py" if (_ROOT / base).with_suffix(".py").is_file() else base + "/"

    # -- filling ---------------------------------------------------------------------------
    def register(self, name=None):
        """Decorator: register a class or function under `name` (default: its own name)."""

        def decorator(obj):
            key = name or obj.__name__
            where = _definition_site(obj)
            first = self._entries.get(key)
            if first is not None and _definition_site(first) != where:
                raise KeyError(
                    f"{self.name} registry: name {key!r} is already registered by "
                    f"{_definition_site(first)}; pick another name for {where}"
                )
            self._entries[key] = obj
            return obj

        return decorator

    # -- lookup ----------------------------------------------------------------------------
    def get(self, name):
        """The object registered as `name`; a family entry ("torchvision.*") gets its suffix
        bound as the first argument. Unknown names raise UsageError listing what exists."""
        self._import_package()
        if name in self._entries:
            return self._entries[name]
        for key, obj in self._entries.items():
            if key.endswith(PATTERN_SUFFIX) and name.startswith(key[:-1]) and len(name) > len(key) - 1:
                return functools.partial(obj, name[len(key) - 1 :])
        raise UsageError(self.unknown_message(name, sorted(self._entries)))

    def build(self, name, *args, **kwargs):
        """Look `name` up and call it with the given arguments."""
        return self.get(name)(*args, **kwargs)

    def check(self, name):
        """Raise UsageError if `name` is not registered, without importing the package."""
        names = self.names()
        if name in names:
            return
        for key in names:
            if key.endswith(PATTERN_SUFFIX) and name.startswith(key[:-1]) and len(name) > len(key) - 1:
                return
        raise UsageError(self.unknown_message(name, names))

    def unknown_message(self, name, names):
        shown = [display_name(n) for n in names]
        matches = close_matches(name, names)
        hint = f"; closest: {', '.join(matches)}" if matches else ""
        return (
            f"unknown {self.name[:-1]} {name!r} in the {self.name} registry{hint}. "
            f"Available: {', '.join(shown) or '(none)'}. "
            f"To add one, {self._where_to_add()} with @{self.symbol}.register()"
        )

    def _where_to_add(self):
        location = self.location
        return f"add it to {location}" if location.endswith(".py") else f"create {location}<file>.py"

    def names(self):
        """Registered names, found by reading the package's source (no import)."""
        found = set()
        for path in self._source_files():
            found.update(_registered_names(path, self.symbol))
        if self._imported:  # also anything registered from elsewhere at run time
            found.update(self._entries)
        return sorted(found, key=str.lower)

    def declared(self, name, attribute):
        """The literal value of class attribute `attribute` of the entry registered as `name`
        (e.g. an experiment's `commands`), read from source without importing; None if absent."""
        for path in self._source_files():
            for registered, node in _registered_nodes(path, self.symbol):
                if registered == name and isinstance(node, ast.ClassDef):
                    for statement in node.body:
                        if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                                and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id == attribute):
                            return ast.literal_eval(statement.value)
        return None

    def _source_files(self):
        base = _ROOT / self.package.replace(".", "/")
        if base.with_suffix(".py").is_file():  # a single module, e.g. utils.meters
            return [base.with_suffix(".py")]
        return [p for p in sorted(base.glob("*.py")) if not p.name.startswith("_")]

    def _import_package(self):
        if self._imported:
            return
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(getattr(package, "__path__", [])):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")
        self._imported = True


def display_name(name):
    """How a registered name is shown to users: "torchvision.*" -> "torchvision.<name>"."""
    return name[:-1] + "<name>" if name.endswith(PATTERN_SUFFIX) else name


def _definition_site(obj):
    obj = inspect.unwrap(obj)
    try:
        file = Path(inspect.getsourcefile(obj)).resolve()
        line = inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return f"{obj.__module__}.{obj.__qualname__}"
    try:
        file = file.relative_to(_ROOT)
    except ValueError:
        pass
    return f"{obj.__qualname__} at {file}:{line}"


def _registered_names(path, symbol):
    """Names given to `@SYMBOL.register(...)` decorators in one source file."""
    return [name for name, _ in _registered_nodes(path, symbol)]


@functools.lru_cache(maxsize=None)
def _registered_nodes(path, symbol):
    """[(name, class or function node)] of each `@SYMBOL.register(...)` in one source file;
    cached, since help asks about the same files many times."""
    return list(_scan(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), symbol))


def _scan(tree, symbol):
    for node in ast.walk(tree):
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for decorator in node.decorator_list:
            if not (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and decorator.func.attr == "register"
                and isinstance(decorator.func.value, ast.Name)
                and decorator.func.value.id == symbol
            ):
                continue
            explicit = [a for a in decorator.args[:1] if isinstance(a, ast.Constant)]
            explicit += [k.value for k in decorator.keywords if k.arg == "name"]
            yield (explicit[0].value if explicit else node.name), node


# The project's registries: what `--experiment`, `--model`, `--dataset`, meter names and
# `--loggers` resolve against. Each is filled by decorators in the package of the same name.
EXPERIMENTS = Registry("experiments", package="experiments")  # train/val/test per task
MODELS = Registry("models", package="models")  # nn.Module classes and factories
DATASETS = Registry("datasets", package="data")  # dataset builders returning train/val/test
METERS = Registry("meters", package="utils.meters")  # metric accumulators, torchnet-based
LOGGERS = Registry("loggers", package="utils.loggers")  # where a run reports: TensorBoard, MLflow, W&B
ALL = (EXPERIMENTS, MODELS, DATASETS, METERS, LOGGERS)
