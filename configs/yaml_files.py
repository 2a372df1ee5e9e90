"""Reading the YAML files the runner is given (--config files and presets, search spaces,
a study's sweep.yaml, a run's config.yaml) with limits a hostile file cannot get past.

PyYAML's safe loader builds no objects, but it still lets a small file describe a huge
document: aliases of aliases ("billion laughs") expand to billions of nodes in whatever walks
the result next (a comparison, an error message, a dump), deep nesting overflows Python's
recursion, and a key written twice silently keeps the second value. Here a file is at most
MAX_BYTES, its document at most MAX_NODES nodes with every alias counted each time it is used
(measured on the composed graph, in time linear in the file), an alias may not contain itself,
and a duplicate key is an error naming both lines. Every failure is one UsageError (exit 2)
that names the file, the line and the problem.
"""
from pathlib import Path

import yaml

MAX_BYTES = 1 << 20  # the runner's YAML files are a few kB; a megabyte is no config file
MAX_NODES = 100_000  # values in the document once every alias is expanded


class YamlError(Exception):
    """Raised inside the loader; load_yaml turns it into a UsageError (see there)."""


def _children(node):
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def expanded_size(root, limit=MAX_NODES):
    """The number of nodes of the document `root` with every alias expanded, computed on the
    graph (each node once); YamlError past `limit` or when an alias contains itself."""
    sizes, open_nodes = {}, set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > limit:
                raise YamlError(f"expands to more than {limit:,} values (aliases of aliases?); a runner file is "
                                f"far smaller", node.start_mark)
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YamlError("an alias refers to the collection that holds it", node.start_mark)
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    return sizes[id(root)]


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader with the limits of this module: the document's expanded size and no
    key twice in one mapping."""

    def compose_document(self):
        node = super().compose_document()
        expanded_size(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a collection as a key: the constructor refuses it (unhashable)
                key = (key_node.tag, key_node.value)
                if key in seen and key_node.value != "<<":
                    raise YamlError(f"key {key_node.value[:40]!r} appears twice (first on line {seen[key] + 1}); "
                                    f"keep one", key_node.start_mark)
                seen.setdefault(key, key_node.start_mark.line)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path, loader=BoundedLoader):
    """The document in the YAML file at `path` (None when empty), read with `loader` (a
    subclass of BoundedLoader); any problem is a UsageError `<path>:<line>:<col>: invalid
    YAML: <problem>` whose `line` and `problem` attributes give the parts."""
    from utils.core.errors import UsageError

    def fail(problem, mark=None):
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        error = UsageError(f"{where}: invalid YAML: {problem}")
        error.line, error.problem = (mark.line + 1 if mark else None), problem
        raise error from None

    file = Path(path)
    if not file.is_file():  # a FIFO or a device (/dev/zero) would be read for ever
        fail("not a regular file")
    size = file.stat().st_size
    if size > MAX_BYTES:
        fail(f"the file has {size / 1e6:.1f} MB; a runner YAML file is at most {MAX_BYTES // 1024} kB")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except YamlError as error:
        fail(error.args[0], error.args[1])
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        fail(getattr(error, "problem", None) or str(error).splitlines()[0], mark)
    except RecursionError:
        fail("nested too deeply")
