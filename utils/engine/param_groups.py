"""The optimizer's parameter groups from the config: --param-groups (name patterns -> lr
multiplier, weight decay, freeze; the first group whose pattern matches wins), --no-decay-norm-bias
(no weight decay on biases and normalisation weights, in every group) and --layer-decay
(timm's layer-wise lr decay, for models that order their layers: `layer_groups()`).

Patterns match what `named_parameters()` calls a parameter, or a module holding it, with a
model's `hidden_prefix` ("net." of a torchvision model) optional: `fc`, `layer4.*`,
`re:layer[34]\\..*`. What the patterns do is logged once per optimizer; a pattern that matches
no parameter of the run is one line naming the closest names, before the run dir exists.
configs/param_spec.py reads the texts (no torch); utils/engine/freezing.py freezes."""
import difflib
import logging

import torch

from configs.param_spec import matcher, parse_groups
from utils.core.errors import UsageError, plural

log = logging.getLogger(__name__)
# normalisation layers: their weights (scales) and biases take no weight decay under --no-decay-norm-bias
NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.RMSNorm,
         torch.nn.LocalResponseNorm)


def candidates(module):
    """[(parameter name, every name a pattern may match for it, the parameter, its owner module)]
    of `module`: the name, the names of the modules holding it, each also without the model's
    `hidden_prefix`."""
    hidden = getattr(module, "hidden_prefix", "")
    owners = dict(module.named_modules())
    found = []
    for name, parameter in module.named_parameters():
        parts = name.split(".")
        prefixes = [".".join(parts[:end]) for end in range(1, len(parts) + 1)]
        names = set(prefixes)
        if hidden:
            names.update(prefix[len(hidden):] for prefix in prefixes if prefix.startswith(hidden))
        found.append((name, names, parameter, owners.get(".".join(parts[:-1]), module)))
    return found


def shown(name, module):
    """A parameter's name as the logs and hints show it (without the model's hidden prefix)."""
    hidden = getattr(module, "hidden_prefix", "")
    return name[len(hidden):] if hidden and name.startswith(hidden) else name


def decays(name, parameter, owner):
    """Whether --no-decay-norm-bias leaves weight decay on this parameter (not a bias, not a
    normalisation layer's, not 1-d like a scale or an offset)."""
    return not (name.rsplit(".", 1)[-1] == "bias" or isinstance(owner, NORMS) or parameter.ndim <= 1)


class Grouping:
    """The run's --param-groups, --no-decay-norm-bias and --layer-decay, applied to each optimizer the
    experiment builds (Context.optimizer), with a count of what each pattern matched."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.specs = parse_groups(cfg.param_groups)
        self.matchers = [[(pattern, matcher(pattern)) for pattern in spec.patterns] for spec in self.specs]
        self.matched = {pattern: 0 for spec in self.specs for pattern in spec.patterns}
        self.names = []  # every parameter name seen, for the hint of a pattern that matches none

    @property
    def active(self):
        return bool(self.specs) or not self.cfg.decay_norm_bias or self.cfg.layer_decay != 1

    def spec_of(self, names):
        """(index, GroupSpec) of the first group matching one of `names`, or (None, None)."""
        for index, (spec, tests) in enumerate(zip(self.specs, self.matchers)):
            for pattern, test in tests:
                if any(test(name) for name in names):
                    self.matched[pattern] += 1
                    return index, spec
        return None, None

    def frozen(self, names):
        """Whether the group these names fall in says freeze: true (for the whole run)."""
        for spec, tests in zip(self.specs, self.matchers):
            if any(test(name) for _, test in tests for name in names):
                return spec.freeze
        return False

    def groups(self, module, lr, weight_decay):
        """The param-group dicts of `module`'s trainable parameters at base `lr` and
        `weight_decay`: one per (pattern group, layer, decay or not), in the order of their
        first parameter, each with its `lr_mult` (what the lr policies scale from) and a
        `group` label. The plain parameter list when no option asks for groups."""
        found = [entry for entry in candidates(module) if entry[2].requires_grad]
        self.names.extend(shown(name, module) for name, *_ in found)
        if not self.active:
            return [parameter for _, _, parameter, _ in found]
        layer_of, layers = self._layers(module)
        made = {}
        for name, names, parameter, owner in found:
            index, spec = self.spec_of(names)
            layer = layer_of(name) if layers else None
            decaying = self.cfg.decay_norm_bias or decays(name, parameter, owner)
            key = (index, layer, decaying)
            if key not in made:
                mult = (spec.lr_mult if spec else 1.0) * (self.cfg.layer_decay ** (layers - 1 - layer) if layers else 1.0)
                wd = (spec.weight_decay if spec and spec.weight_decay is not None
                      else weight_decay * (spec.wd_mult if spec else 1.0)) if decaying else 0.0
                label = ", ".join(part for part in (spec.label if spec else "default",
                                                    f"layer {layer}" if layers else "",
                                                    "" if decaying or self.cfg.decay_norm_bias else "no decay") if part)
                made[key] = {"params": [], "lr": lr * mult, "weight_decay": wd, "lr_mult": mult, "group": label,
                             "frozen": bool(spec and spec.freeze)}
            made[key]["params"].append(parameter)
        groups = list(made.values())
        log.info("%s: %s", getattr(module, "model_name", type(module).__name__), plural(len(groups), "parameter group"))
        for group in groups:
            count = sum(parameter.numel() for parameter in group["params"])
            log.info("  %s: %s, %s parameters, lr %.3g, weight decay %.3g%s", group["group"],
                     plural(len(group["params"]), "tensor"), f"{count:,}", group["lr"], group["weight_decay"],
                     ", frozen" if group.pop("frozen") else "")
        return groups

    def _layers(self, module):
        """(parameter name -> layer index, number of layers) for --layer-decay, or (None, 0) off."""
        if self.cfg.layer_decay == 1:
            return None, 0
        order = module.layer_groups() if hasattr(module, "layer_groups") else None
        if not order:
            raise UsageError(f"--layer-decay={self.cfg.layer_decay:g}: model {getattr(module, 'model_name', type(module).__name__)} "
                             f"does not order its layers (ResNet34 and torchvision resnets and vits do); drop --layer-decay, "
                             f"or give the layers lr multipliers with --param-groups")
        where = {prefix: index for index, prefixes in enumerate(order) for prefix in prefixes}

        def layer_of(name):
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                if ".".join(parts[:end]) in where:
                    return where[".".join(parts[:end])]
            raise ValueError(f"{type(module).__name__}.layer_groups() leaves parameter {name} out")
        return layer_of, len(order)

    def check_matched(self):
        """UsageError for the first --param-groups pattern that matched no parameter."""
        for pattern, count in self.matched.items():
            if not count:
                raise UsageError(f"--param-groups: pattern {pattern!r} matches no parameter{closest(pattern, self.names)}")


def closest(pattern, names):
    """' (closest: a, b, c)': the parameter or module names nearest to `pattern`."""
    modules = {".".join(name.split(".")[:end]) for name in names for end in range(1, name.count(".") + 1)}
    pool = sorted(set(names) | modules)
    near = difflib.get_close_matches(pattern.removeprefix("re:"), pool, n=4, cutoff=0.4)
    if not near:  # nothing alike: the top-level modules say where to start
        near = sorted({name.split(".")[0] for name in names})[:6]
    return f" (closest: {', '.join(near)})" if near else ""
