"""Two manifest blocks (utils/engine/manifest.py) as the lines a person reads: what differs
between the environment a run was trained in and another (`reproduce`, `runs --diff`).

Each line names one item and both values, old -> new: `torch 2.14.1 -> 2.13.0`, `threads 2 ->
1`, `git 3f2a1c0 -> 9b7e2d1 (dirty: 2 files)`, `data: train/cat.12.jpg changed (1 of 240
files)`. Items only one side recorded are not compared; the command line, host, folder and
start time are not items (they always differ).
"""
from utils.core.errors import plural

SHOWN = 3  # names listed before "+N more"
SETTINGS = (("threads", "threads"), ("world_size", "world size"), ("device", "device"), ("precision", "precision"),
            ("channels_last", "channels_last"), ("compile", "compile"), ("seed", "seed"), ("max_epoch", "--max-epoch"),
            ("image_cache", "image cache"))


def _few(names):
    names = list(names)
    return ", ".join(names[:SHOWN]) + (f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else "")


def _git_text(git):
    changed = git.get("changed") or []
    dirty = f" (dirty: {plural(len(changed), 'file')}: {_few(changed)})" if git.get("dirty") else ""
    return f"{str(git.get('commit'))[:7]}{dirty}"


def code_lines(a, b):
    a, b = a or {}, b or {}
    if "git" in a and "git" in b:
        old, new = a["git"], b["git"]
        if old.get("commit") != new.get("commit") or old.get("dirty") != new.get("dirty"):
            return [f"git {_git_text(old)} -> {_git_text(new)}"]
        if old.get("diff_sha256") != new.get("diff_sha256"):
            files = sorted(set(old.get("changed") or []) | set(new.get("changed") or []))
            return [f"uncommitted changes differ on git {_git_text(new)}: {_few(files)}"]
        return []
    if "sources" in a and "sources" in b:
        old, new = a["sources"].get("digests") or {}, b["sources"].get("digests") or {}
        if a["sources"].get("sha256") == b["sources"].get("sha256"):
            return []
        changed = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
        return [f"source: {plural(len(changed), 'file')} differ: {_few(changed)} ({len(new)} files)"]
    if a and b:
        kind = lambda code: "a git checkout" if "git" in code else "a folder without git"  # noqa: E731
        return [f"code: {kind(a)} -> {kind(b)} (not comparable file by file)"]
    return []


def package_lines(a, b):
    a, b = a or {}, b or {}
    lines = [f"{name} {a[name]} -> {b[name]}" for name in sorted(set(a) & set(b)) if a[name] != b[name]]
    lines += [f"{name} {a[name]} -> not installed" for name in sorted(set(a) - set(b))]
    lines += [f"{name} not installed -> {b[name]}" for name in sorted(set(b) - set(a))]
    return lines


def data_lines(a, b, a_files, b_files):
    a, b = a or {}, b or {}
    lines = []
    old_roots, new_roots = a.get("roots") or {}, b.get("roots") or {}
    for name in sorted(set(old_roots) | set(new_roots)):
        old, new = old_roots.get(name), new_roots.get(name)
        label = "data" if name == "train" else f"data ({name})"
        if old is None or new is None:
            lines.append(f"{label}: only one run reads it ({(old or new).get('path')})")
            continue
        if old.get("sha256") == new.get("sha256") and not old.get("missing") and not new.get("missing"):
            continue
        if new.get("missing") or old.get("missing"):
            lines.append(f"{label}: {new.get('path') if new.get('missing') else old.get('path')} does not exist "
                         f"{'now' if new.get('missing') else 'in the first'}")
            continue
        before, after = (a_files or {}).get(name) or {}, (b_files or {}).get(name) or {}
        if before and after:
            changed = sorted(f for f in set(before) & set(after) if before[f] != after[f])
            added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
            parts = [f"{_few(changed)} changed" if changed else "", f"{_few(added)} added" if added else "",
                     f"{_few(removed)} removed" if removed else ""]
            total = len(set(before) | set(after))
            lines.append(f"{label}: {'; '.join(part for part in parts if part)} "
                         f"({len(changed) + len(added) + len(removed)} of {total} files)")
        else:
            lines.append(f"{label}: content differs ({old.get('files')} files, {old.get('bytes')} bytes -> "
                         f"{new.get('files')} files, {new.get('bytes')} bytes)")
    old_split, new_split = a.get("split") or {}, b.get("split") or {}
    for name in sorted(set(old_split) & set(new_split)):
        if old_split[name] != new_split[name]:
            sizes = f" ({(a.get('sizes') or {}).get(name)} -> {(b.get('sizes') or {}).get(name)} items)"
            lines.append(f"split: the {name} items differ{sizes}")
    return lines


def config_lines(a, b):
    """'option --lr 0.01 -> 0.02' for each option that decides what a run computes and that
    both blocks recorded with different values (config.yaml edited, a changed default)."""
    a, b = a or {}, b or {}
    return [f"option --{name.replace('_', '-')} {_show(a[name])} -> {_show(b[name])}"
            for name in sorted(set(a) & set(b)) if a[name] != b[name]]


def _show(value):
    return "unset" if value is None else str(value)


def setting_lines(a, b):
    lines = []
    for key, label in (("python", "python"),):
        if a.get(key) is not None and b.get(key) is not None and a[key] != b[key]:
            lines.append(f"{label} {a[key]} -> {b[key]}")
    old_hw, new_hw = a.get("hardware") or {}, b.get("hardware") or {}
    for key in ("os", "cpu", "cores", "gpus", "cuda", "cudnn"):
        if key in old_hw and key in new_hw and old_hw[key] != new_hw[key]:
            lines.append(f"{key} {_show(old_hw[key])} -> {_show(new_hw[key])}")
    for key, label in SETTINGS:
        if key in a and key in b and a[key] != b[key]:
            lines.append(f"{label} {_show(a[key])} -> {_show(b[key])}")
    old_det, new_det = a.get("determinism") or {}, b.get("determinism") or {}
    for key in sorted(set(old_det) & set(new_det)):
        if old_det[key] != new_det[key]:
            lines.append(f"{key} {_show(old_det[key])} -> {_show(new_det[key])}")
    old_env, new_env = a.get("environment") or {}, b.get("environment") or {}
    for key in sorted(set(old_env) | set(new_env)):
        if old_env.get(key) != new_env.get(key):
            lines.append(f"{key} {_show(old_env.get(key))} -> {_show(new_env.get(key))}")
    return lines


def differences(a, b, a_files=None, b_files=None, options=True):
    """The lines that say how manifest block `b` differs from block `a` (the data's files:
    {root: {file: digest}} of each, when known), most telling first: options, code, data,
    packages, then the machine and the settings (`options`: the option lines too)."""
    return ((config_lines(a.get("config"), b.get("config")) if options else []) + code_lines(a.get("code"), b.get("code"))
            + data_lines(a.get("data"), b.get("data"), a_files, b_files)
            + package_lines(a.get("packages"), b.get("packages")) + setting_lines(a, b))


def block_at(manifest, epoch):
    """The index and block of `manifest` that trained epoch `epoch` (1-based, or 0 for the
    start): the last block that began before it."""
    blocks = manifest.get("environments") or []
    chosen = 0
    for index, block in enumerate(blocks):
        if (block.get("at") or {}).get("epoch", 0) < max(epoch, 1) or index == 0:
            chosen = index
    return chosen, blocks[chosen] if blocks else {}
