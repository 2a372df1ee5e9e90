"""<run dir>/trackers.json: which tracker runs a run dir reports to ({"mlflow": {"uri",
"experiment_id", "run_id"}, "wandb": {"project", "id", "mode"}}), so a resume continues the
same ones and `test` / `export` attach their files to them. A sweep's study folder keeps its
parent runs the same way. Written atomically; unreadable is the same as absent."""
import json

from utils.core.io import atomic_open

FILE = "trackers.json"


def read(folder):
    """{tracker name: its ids} kept in `folder`, {} when none (or the file is damaged)."""
    try:
        found = json.loads((folder / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {name: ids for name, ids in found.items() if isinstance(ids, dict)}  # a damaged entry: as if absent


def keep(folder, name, ids):
    """Record tracker `name`'s ids in `folder`, keeping the others'."""
    record = read(folder)
    record[name] = ids
    with atomic_open(folder / FILE, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
