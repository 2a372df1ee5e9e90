"""The config as a run shows it: the start-of-run log lines (describe) and the resolved
config.yaml in its run dir (dump_yaml), each value as it would be typed."""
import shlex

from configs.loader import changed_options
from configs.values import flag
from configs.schema import GROUPS, fields_of


def describe(cfg, named=None, given=(), source=None):
    """The start-of-run log: the options the user set (`given`: the names typed as flags or in
    the --config file, even at their default; and any option not at its default) and those
    resolved from the data (what differs between `named`, the config before the data was
    read, and `cfg`). The whole config is in the run dir's config.yaml, not the log. With a
    `source` (the run's own config, on a resume or a reproduction) it says so and lists only
    what was typed now: the rest the user did not set here."""
    named = named or cfg
    fields = fields_of(cfg.experiment)
    from_data = {name: getattr(cfg, name) for name in fields if getattr(cfg, name) != getattr(named, name)}
    changed = changed_options(named) if source is None else {}
    given = {name: getattr(named, name) for name in fields
             if (name in given or name in changed) and name not in ("env", "config", "resume")}

    def shown(options):
        return " ".join(f"{flag(name)}={_shown(value)}" for name, value in options.items())

    if source is not None:
        lines = [f"config: {source}" + (f"; you set now {shown(given)}" if given else "")]
    else:
        lines = [f"config: you set {shown(given)}" if given else f"config: the defaults of experiment {cfg.experiment}"]
    if from_data:
        lines.append(f"config from the data: {shown(from_data)}")
    return lines


def _shown(value):
    """A value as it would be typed on the command line."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # --lr=2 is shown as typed, not as 2.0; the schema types it again
    return shlex.quote(str(value))


def dump_yaml(cfg, path=None):
    """The resolved config as YAML, grouped and commented; `--config` of it gives `cfg` back
    (the run saved at `path` in its header's reproduce command)."""
    import yaml

    where = path or "<this file>"
    again = f"{cfg.env}-again" if cfg.env else "<new name>"
    out = [f"# Resolved config of this run. Reproduce it in a new run dir: python main.py train --config={where} --env={again}"]
    fields = fields_of(cfg.experiment)
    for group in (*GROUPS, cfg.experiment):
        if not any(f.metadata["group"] == group for f in fields.values()):
            continue
        out.append(f"\n# -- {group}" + (" (the experiment's own options)" if group == cfg.experiment else ""))
        for name, f in fields.items():
            if f.metadata["group"] != group or f.metadata["role"] == "invocation":
                continue  # how this run was invoked, not what it is
            out.append(yaml.safe_dump({name: getattr(cfg, name)}, default_flow_style=False, width=1000).rstrip())
    return "\n".join(out) + "\n"
