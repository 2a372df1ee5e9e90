"""Which code a run was trained by, for its manifest (utils/engine/manifest.py).

In a git checkout: the commit, the branch, whether the tree is dirty, the changed files, and
the uncommitted diff (`git diff HEAD` plus every untracked, not ignored source file as a new
file; other untracked files, data or outputs, are only counted),
whose sha256 the manifest keeps and whose text it saves beside it as source.diff. Outside a
checkout (a copied folder, no git on the machine): a sha256 of every source file of the
project (Python, YAML, TOML, INI, shell and requirements files; not hidden folders, virtual
environments, checkpoints or __pycache__), with a short digest per file, so a difference
names the files.
"""
import hashlib
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project: main.py's folder
SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh")
SHORT = 16
LARGEST_TEXT = 256 * 1024  # bytes of an untracked file whose text source.diff holds


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git(*args):
    """git's stdout (bytes) run in the project, or None when git is missing or fails."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _untracked_as_diff(path):
    """An untracked file as a new file's diff; a large or binary one (a data file left in the
    project) by its size and sha256 only, so source.diff stays a diff of code."""
    try:
        size = (ROOT / path).stat().st_size
        if size > LARGEST_TEXT:
            return f"Large file {path} (untracked), {size} bytes, sha256 {_file_sha256(ROOT / path)}\n"
        data = (ROOT / path).read_bytes()
    except OSError as error:
        return f"untracked {path}: unreadable ({error.strerror})\n"
    if b"\0" in data[:8192]:
        return f"Binary file {path} (untracked), sha256 {hashlib.sha256(data).hexdigest()}\n"
    lines = data.decode("utf-8", errors="replace").splitlines()
    body = "".join(f"+{line}\n" for line in lines)
    return f"diff --git a/{path} b/{path}\nnew file (untracked)\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n{body}"


def git_state():
    """{"commit", "branch", "dirty", "changed", "diff_sha256", "diff"} of the project's
    checkout, or None outside one."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    branch = (_git("rev-parse", "--abbrev-ref", "HEAD") or b"").decode().strip()
    status = (_git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--", ".") or b"").decode(errors="replace")
    changed, untracked, other = [], [], 0
    entries = iter(status.split("\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if code[0] in "RC":
            next(entries, None)  # a rename's second field: the old name
        if code == "??" and not is_source(path):
            other += 1  # an untracked image, csv, log: data or output, not code (the data has its own fingerprint)
            continue
        changed.append(path)
        if code == "??":
            untracked.append(path)
    top = Path((_git("rev-parse", "--show-toplevel") or b"").decode().strip() or ROOT)
    # porcelain paths are relative to the top of the checkout; read files from there
    diff = (_git("diff", "HEAD", "--binary", "--", ".") or b"").decode("utf-8", errors="replace")
    diff += "".join(_untracked_as_diff(os.path.relpath(top / path, ROOT)) for path in sorted(untracked))
    return {"commit": commit.decode().strip(), "branch": branch, "dirty": bool(changed), "changed": sorted(changed),
            "untracked_other": other,
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None, "diff": diff}


def is_source(path):
    name = os.path.basename(path)
    return name.endswith(SUFFIXES) or (name.startswith("requirements") and name.endswith(".txt"))


def source_files():
    """The project's source files, relative to ROOT, sorted."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        here = Path(folder)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".") and name not in
                               ("__pycache__", "checkpoints", "node_modules") and not (here / name / "pyvenv.cfg").exists())
        found += [(here / name).relative_to(ROOT).as_posix() for name in files if is_source(name)]
    return sorted(found)


def sources_state():
    """{"files", "sha256", "digests": {file: short sha256}} of the project's source files."""
    whole, digests = hashlib.sha256(), {}
    for relative in source_files():
        try:
            sha = hashlib.sha256((ROOT / relative).read_bytes()).hexdigest()
        except OSError:
            continue
        whole.update(f"{relative}\0{sha}\n".encode())
        digests[relative] = sha[:SHORT]
    return {"files": len(digests), "sha256": whole.hexdigest(), "digests": digests}


def code_state():
    """{"git": git_state()} in a checkout, else {"sources": sources_state()}."""
    git = git_state()
    return {"git": git} if git is not None else {"sources": sources_state()}
