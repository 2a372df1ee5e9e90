"""The text of the fine-tuning options, read and checked without torch: --param-groups (name
patterns -> lr multiplier, weight decay, freeze), --freeze's patterns and the unfreeze
schedule. configs/loader.py checks them with the rest of the config, so a malformed pattern
or an absurd multiplier is one line before anything is built; utils/engine/param_groups.py
matches them against a model's parameter names.

--param-groups takes two forms:
  the common case, on the command line:   --param-groups='fc=10,layer4=0.5'   (pattern=lr_mult)
  everything, in a YAML config (a list; the first group whose pattern matches a parameter wins):
      param_groups:
        - {params: fc, lr_mult: 10}
        - {params: [layer3, layer4], lr_mult: 0.5, wd_mult: 0}
        - {params: "re:.*\\.bn\\d\\.weight", weight_decay: 0}
        - {params: conv1, freeze: true}
  and the same list as YAML flow text on the command line (--param-groups='[{params: fc, lr_mult: 10}]').

A pattern is a shell-style glob (`*`, `?`, `[..]`; `*` crosses dots) or, after `re:`, a
Python regular expression; it matches a parameter when it matches its whole name
(`layer4.0.conv1.weight`) or the name of a module holding it (`layer4`, `layer4.0`)."""
import dataclasses
import fnmatch
import math
import re

from utils.core.errors import UsageError, excerpt

GROUP_KEYS = ("params", "lr_mult", "weight_decay", "wd_mult", "freeze")
MAX_MULT = 1e4  # an lr or weight-decay multiplier beyond this is a typo, not a recipe (timm's heads use up to 100)
MAX_WEIGHT_DECAY = 10.0  # L2 penalties in use are 1e-5..0.1 (AdamW's 0.05, ViTs' 0.3)
PATTERN_LIMIT = 1000  # patterns in one run: more is a generated file gone wrong


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """One entry of --param-groups: the parameters its patterns match get lr x lr_mult and
    weight decay `weight_decay` (when given) or --weight-decay x wd_mult; freeze: never trained."""
    patterns: tuple
    lr_mult: float = 1.0
    weight_decay: float = None
    wd_mult: float = 1.0
    freeze: bool = False

    @property
    def label(self):
        return ",".join(self.patterns)


def structured_text(value):
    """A YAML list or mapping given for a text option (--param-groups, --freeze in a config
    file) as the one-line text the option holds: a list of plain names joins with commas,
    anything else becomes YAML flow text, which parse_groups reads back."""
    import yaml  # (lazily: main.py says "set it up" in one line on a Python without the packages)

    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf, sort_keys=False).strip()


def parse_groups(text, where="option --param-groups: "):
    """[GroupSpec] of --param-groups' text ('' -> []), or UsageError naming the entry and the fix."""
    text = str(text or "").strip()
    if not text:
        return []
    if text.startswith(("[", "{", "-")):
        import yaml  # (lazily, as above)

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise UsageError(f"{where}not valid YAML ({problem}); quote patterns that start with * "
                             f"(e.g. [{{params: '*.bias', weight_decay: 0}}])") from None
        data = [data] if isinstance(data, dict) else data
        if not isinstance(data, list) or not data:
            raise UsageError(f"{where}expected a list of {{params: <pattern>, lr_mult: .., weight_decay: .., wd_mult: .., "
                             f"freeze: ..}}, got {excerpt(text)}")
        specs = [_entry(item, f"{where}group {number}: ") for number, item in enumerate(data, 1)]
    else:
        specs = [_compact(part.strip(), where) for part in text.split(",") if part.strip()]
    patterns = [pattern for spec in specs for pattern in spec.patterns]
    if len(patterns) > PATTERN_LIMIT:
        raise UsageError(f"{where}{len(patterns)} patterns; at most {PATTERN_LIMIT}")
    repeated = next((pattern for index, pattern in enumerate(patterns) if pattern in patterns[:index]), None)
    if repeated is not None:
        raise UsageError(f"{where}pattern {excerpt(repeated)} is given twice; the first group would take every "
                         f"parameter it matches, so the second could never apply: give it once")
    return specs


def _compact(part, where):
    pattern, equals, value = part.rpartition("=")
    if not equals or not pattern.strip():
        raise UsageError(f"{where}{excerpt(part)} is not <pattern>=<lr multiplier> (e.g. --param-groups='fc=10,layer4=0.5'); "
                         f"weight decay and freezing go in the list form (docs/fine-tuning.md)")
    return GroupSpec((check_pattern(pattern.strip(), where),), lr_mult=_multiplier(value, "lr_mult", where))


def _entry(item, where):
    if not isinstance(item, dict):
        raise UsageError(f"{where}expected a mapping {{params: <pattern>, lr_mult: ..}}, got {excerpt(item)}")
    unknown = [key for key in item if key not in GROUP_KEYS]
    if unknown:
        raise UsageError(f"{where}unknown key {excerpt(unknown[0])} (keys: {', '.join(GROUP_KEYS)})")
    raw = item.get("params")
    patterns = [raw] if isinstance(raw, str) else raw
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p.strip() for p in patterns):
        raise UsageError(f"{where}`params` must be a pattern or a list of patterns (e.g. params: fc), got {excerpt(raw)}")
    if "weight_decay" in item and "wd_mult" in item:
        raise UsageError(f"{where}give weight_decay (the value) or wd_mult (times --weight-decay), not both")
    freeze = item.get("freeze", False)
    if not isinstance(freeze, bool):
        raise UsageError(f"{where}freeze must be true or false, got {excerpt(freeze)}")
    settings = {key: _multiplier(item[key], key, where) for key in ("lr_mult", "wd_mult") if key in item}
    if "weight_decay" in item:
        settings["weight_decay"] = _number(item["weight_decay"], "weight_decay", where, 0.0, MAX_WEIGHT_DECAY)
    return GroupSpec(tuple(check_pattern(p.strip(), where) for p in patterns), freeze=freeze, **settings)


def _multiplier(value, key, where):
    number = _number(value, key, where, 0.0, MAX_MULT)
    if key == "lr_mult" and number == 0:
        raise UsageError(f"{where}lr_mult must be > 0; to keep parameters fixed use freeze: true (or --freeze)")
    return number


def _number(value, key, where, low, high):
    try:
        number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        raise UsageError(f"{where}{key} must be a number, got {excerpt(value)}")
    if not low <= number <= high:
        raise UsageError(f"{where}{key} must be within {low:g}..{high:g}, got {excerpt(value)}")
    return number


def check_pattern(pattern, where):
    """`pattern` if it is a valid glob or `re:` regex, else UsageError."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as error:
            raise UsageError(f"{where}pattern {excerpt(pattern)} is not a valid regular expression ({error})") from None
        if not pattern[3:]:
            raise UsageError(f"{where}pattern 're:' has no regular expression after it")
        return pattern
    if any(char.isspace() for char in pattern):
        raise UsageError(f"{where}pattern {excerpt(pattern)} has a space; parameter names have none")
    if pattern.count("[") != pattern.count("]"):
        raise UsageError(f"{where}pattern {excerpt(pattern)} has an unclosed [ ]; write re:<regex> for a regular expression")
    return pattern


def matcher(pattern):
    """A function name -> bool for one checked pattern (the whole name must match)."""
    if pattern.startswith("re:"):
        compiled = re.compile(pattern[3:])
        return lambda name: compiled.fullmatch(name) is not None
    compiled = re.compile(fnmatch.translate(pattern))
    return lambda name: compiled.match(name) is not None


def parse_patterns(text, option="--freeze"):
    """The patterns of a comma-separated list (--freeze='conv1,layer1,layer2'), checked."""
    where = f"option {option}: "
    patterns = [check_pattern(part.strip(), where) for part in str(text or "").split(",") if part.strip()]
    if len(patterns) > PATTERN_LIMIT:
        raise UsageError(f"{where}{len(patterns)} patterns; at most {PATTERN_LIMIT}")
    if len(set(patterns)) != len(patterns):
        raise UsageError(f"{where}a pattern is given twice; give each once")
    return patterns


def check_fine_tuning(cfg):
    """UsageError for a fine-tuning setting that cannot run: the texts above, the unfreeze
    schedule against --freeze and --max-epoch, --layer-decay's range."""
    parse_groups(cfg.param_groups)
    frozen = parse_patterns(cfg.freeze)
    if not 0 < cfg.layer_decay <= 1:
        raise UsageError(f"option --layer-decay must be within (0, 1] (each layer's lr is this times the next one's; "
                         f"1 = off, the usual 0.65..0.9), got {cfg.layer_decay:g}")
    if cfg.unfreeze_epoch:
        if not frozen:
            raise UsageError(f"--unfreeze-epoch={cfg.unfreeze_epoch} has nothing to unfreeze; give --freeze=<patterns> "
                             f"(e.g. --freeze=conv1,layer1,layer2)")
        if cfg.unfreeze_epoch == 1:
            raise UsageError("--unfreeze-epoch=1 unfreezes before the first epoch, so nothing is ever frozen; give 2 "
                             "or later (the first epoch that trains them), or drop --freeze")
        last = cfg.unfreeze_epoch + (len(frozen) - 1 if cfg.unfreeze == "gradual" else 0)
        if last > cfg.max_epoch:
            what = (f"the last of {len(frozen)} patterns unfrozen one per epoch from epoch {cfg.unfreeze_epoch} would "
                    f"unfreeze at epoch {last}" if cfg.unfreeze == "gradual" else f"epoch {cfg.unfreeze_epoch}")
            latest = cfg.max_epoch - last + cfg.unfreeze_epoch
            fix = f"--unfreeze-epoch={latest} or " if latest >= 2 else ""
            raise UsageError(f"--unfreeze-epoch={cfg.unfreeze_epoch}: {what}, after the run's last (--max-epoch="
                             f"{cfg.max_epoch}); give {fix}a larger --max-epoch")
    elif cfg.unfreeze == "gradual":
        raise UsageError("--unfreeze=gradual needs --unfreeze-epoch=N (the epoch the last --freeze pattern trains from)")
