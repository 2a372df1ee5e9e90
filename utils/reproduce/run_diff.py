"""`python main.py runs --diff A B`: how two runs differ, read from their files (no torch):
the options that differ (A's value | B's value, from config.yaml), the manifest items that
differ (their starting environments: code, data, packages, machine, threads), each run's best
metric (status.json), and the first epoch at which their fingerprints part."""
from pathlib import Path

import configs
from configs.loader import load_config, read_yaml
from utils.core.errors import UsageError, UserError
from utils.core.records import Damaged
from utils.engine import checkpoint, fingerprints, manifest, manifest_diff
from utils.engine import status as run_status
from utils.tables import columns

NOT_OPTIONS = ("env", "checkpoint_dir", "config", "resume")


def find(checkpoint_dir, name):
    """The run dir of `name`: a run under `checkpoint_dir` (<study>/trial-<n> too) or a path."""
    for candidate in (Path(checkpoint_dir) / name, Path(name)):
        if checkpoint.is_run(candidate):
            return candidate
    hint = checkpoint.run_hint(Path(checkpoint_dir) / name) if "/" not in name else ""
    raise UserError(f"runs --diff: no run {name} in {checkpoint_dir}{hint or ''}")


def _options(run_dir):
    """{option: value} of the run's config.yaml, typed, with the defaults of options it
    does not name (a run saved before an option existed ran with its default)."""
    path = run_dir / "config.yaml"
    try:
        values = configs.as_dict(load_config({"config": str(path)}))
    except UsageError:  # a config this runner no longer accepts: its text as it is
        try:
            values = read_yaml(path)
        except UsageError:
            return {}
    return {key: value for key, value in values.items() if key not in NOT_OPTIONS}


def _best(run_dir):
    try:
        best = (run_status.read(run_dir) or {}).get("best")
    except Damaged:
        return "? (its status.json is damaged)"
    return f"{best['metric']} {best['value']:.4f} (epoch {best['epoch']})" if best else "-"


def _shown(value):
    return "(unset)" if value is None else str(value)


def parting(a_prints, b_prints):
    """The line that says where two runs' fingerprints part."""
    common = sorted(set(a_prints) & set(b_prints))
    if not common:
        return "fingerprints: no epoch recorded by both runs"
    same = []
    for epoch in common:
        parted = fingerprints.differences(a_prints[epoch]["objects"], b_prints[epoch]["objects"])
        if parted:
            before = f"identical through epoch {same[-1]}, " if same else ""
            return f"fingerprints: {before}part at epoch {epoch} ({', '.join(name for name, _, _ in parted)})"
        same.append(epoch)
    return f"fingerprints: identical in every epoch both recorded (1-{common[-1]})" if common[0] == 1 and \
        len(common) == common[-1] else f"fingerprints: identical in the {len(common)} epochs both recorded"


def _manifest_lines(a, a_dir, b, b_dir):
    """How the environments the two runs began in differ, or why that cannot be said."""
    try:
        a_manifest, b_manifest = manifest.read(a_dir), manifest.read(b_dir)
        a_files, b_files = manifest.read_files(a_dir).get(0), manifest.read_files(b_dir).get(0)
    except Damaged as damaged:
        return [f"manifest: not compared: {damaged}"]
    missing = [name for name, found in ((a, a_manifest), (b, b_manifest)) if found is None]
    if missing:
        return [f"manifest: {' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} none (trained before the "
                f"runner wrote one): code, packages, machine and data not compared"]
    changes = manifest_diff.differences(a_manifest["environments"][0], b_manifest["environments"][0], a_files, b_files,
                                        options=False)  # listed above, from config.yaml
    if not changes:
        return ["manifest: the same code, packages, data, machine and settings"]
    return [f"manifest items that differ ({a} -> {b}):", *(f"  {line}" for line in changes)]


def render(checkpoint_dir, a, b):
    """The report as text."""
    a_dir, b_dir = find(checkpoint_dir, a), find(checkpoint_dir, b)
    lines = [f"runs --diff {a} {b}"]
    a_options, b_options = _options(a_dir), _options(b_dir)
    rows = [["--" + key.replace("_", "-"), _shown(a_options.get(key)), _shown(b_options.get(key))]
            for key in sorted(set(a_options) | set(b_options)) if a_options.get(key) != b_options.get(key)]
    if rows:
        lines += ["options that differ:", *("  " + line for line in columns(("option", a, b), rows))]
    else:
        lines.append("options: the same")
    lines += _manifest_lines(a, a_dir, b, b_dir)
    lines.append(f"best: {a} {_best(a_dir)} | {b} {_best(b_dir)}")
    try:
        lines.append(parting(fingerprints.read(a_dir), fingerprints.read(b_dir)))
    except Damaged as damaged:
        lines.append(f"fingerprints: not compared: {damaged}")
    return "\n".join(lines)
