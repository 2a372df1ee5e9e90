"""Frozen parameters: --freeze's patterns until --unfreeze-epoch (all at once, or one pattern
per epoch from the last listed with --unfreeze=gradual), and --param-groups' `freeze: true`
for the whole run.

What is frozen is a function of the config and the epoch alone, so a resumed run, mid-epoch
or after an unfreeze, freezes exactly what the uninterrupted run froze. A frozen parameter
stays in its optimizer's group with requires_grad off: it gets no gradient, so the optimizer
skips it (no update, no weight decay, no state) until it trains, and the optimizer's groups,
and so its checkpoint, keep one layout through the run. BatchNorm layers whose parameters
are all frozen stay in eval mode while the rest trains: their running statistics stay those
of the pretrained weights (and under DDP the frozen parameters are not all-reduced)."""
import logging

import torch
from torch.optim.swa_utils import AveragedModel

from configs.param_spec import matcher, parse_patterns
from utils.core.errors import UsageError, plural
from utils.engine import checkpoint
from utils.engine.param_groups import candidates, closest, shown

log = logging.getLogger(__name__)


class Freezing:
    """The run's frozen parameters by epoch; `apply(objects, epoch)` before an epoch trains."""

    def __init__(self, cfg, grouping):
        self.cfg, self.grouping = cfg, grouping
        self.patterns = parse_patterns(cfg.freeze)
        self.tests = [(pattern, matcher(pattern)) for pattern in self.patterns]
        self.trainable = None  # ids of the parameters that train when nothing is frozen (model's own choice)
        self.frozen_now = set()  # ids frozen in the epoch being trained

    @property
    def active(self):
        return bool(self.patterns) or any(spec.freeze for spec in self.grouping.specs)

    def frozen_patterns(self, epoch):
        """The --freeze patterns frozen while epoch `epoch` (0-based, as TrainState counts) trains."""
        number = epoch + 1
        if not self.cfg.unfreeze_epoch or number < self.cfg.unfreeze_epoch:
            return list(self.patterns)
        if self.cfg.unfreeze == "gradual":  # one more pattern per epoch, from the last listed
            return self.patterns[:max(0, len(self.patterns) - (number - self.cfg.unfreeze_epoch + 1))]
        return []

    def modules(self, objects):
        """The plain modules whose parameters train (an EMA copy is not trained)."""
        return [checkpoint.unwrap(obj) for obj in objects.values()
                if isinstance(obj, torch.nn.Module) and not isinstance(obj, AveragedModel)]

    def check(self, objects):
        """Before the run dir exists: every --freeze pattern matches a parameter, and the first
        epoch leaves some parameter to train. Remembers which parameters train by design."""
        if not self.active:
            return
        entries = [(module, entry) for module in self.modules(objects) for entry in candidates(module)]
        self.trainable = {id(entry[2]) for _, entry in entries if entry[2].requires_grad}
        for pattern, test in self.tests:
            if not any(test(name) for _, entry in entries for name in entry[1]):
                names = [shown(entry[0], module) for module, entry in entries]
                raise UsageError(f"--freeze: pattern {pattern!r} matches no parameter{closest(pattern, names)}")
        frozen = self._frozen(objects, 0)
        if self.trainable and frozen >= self.trainable:
            raise UsageError(f"--freeze={self.cfg.freeze} freezes every parameter of the run, so the first epoch would "
                             f"train nothing; leave the head out (e.g. the last layer), or drop --freeze")

    def _frozen(self, objects, epoch):
        """ids of the parameters frozen in `epoch`."""
        patterns = set(self.frozen_patterns(epoch))
        tests = [test for pattern, test in self.tests if pattern in patterns]
        frozen = set()
        for module in self.modules(objects):
            for _, names, parameter, _ in candidates(module):
                if id(parameter) in self.trainable and (self.grouping.frozen(names)
                                                        or any(test(name) for test in tests for name in names)):
                    frozen.add(id(parameter))
        return frozen

    def apply(self, objects, epoch):
        """Freeze what `epoch` (0-based) freezes and unfreeze the rest; True when that changed
        which parameters train (DDP and compile wrappers are then rebuilt)."""
        if not self.active:
            return False
        frozen = self._frozen(objects, epoch)
        changed = frozen != self.frozen_now
        self.frozen_now = frozen
        count = tensors = 0
        for module in self.modules(objects):
            for parameter in module.parameters():
                if id(parameter) in self.trainable:
                    parameter.requires_grad_(id(parameter) not in frozen)
                    if id(parameter) in frozen:
                        count, tensors = count + parameter.numel(), tensors + 1
        if changed:
            patterns = self.frozen_patterns(epoch)
            if tensors:
                scheduled = f" ({', '.join(patterns)}{self._until(epoch, patterns)})" if patterns else ""
                log.info("epoch %d: %s frozen (%s parameters)%s", epoch + 1, plural(tensors, "tensor"), f"{count:,}",
                         scheduled)
            else:
                log.info("epoch %d: nothing frozen; every parameter trains from here", epoch + 1)
        self.hold_norms(objects)
        return changed

    def _until(self, epoch, patterns):
        """'; layer2 trains from epoch 4' / '; they train from epoch 3': the next unfreeze."""
        if not self.cfg.unfreeze_epoch:
            return ""
        if self.cfg.unfreeze == "gradual":
            later = max(epoch + 2, self.cfg.unfreeze_epoch)
            return f"; {patterns[-1]} trains from epoch {later}"
        return f"; they train from epoch {self.cfg.unfreeze_epoch}"

    def hold_norms(self, objects):
        """Normalisation layers whose parameters are all frozen back in eval mode (their
        running statistics stay fixed); after every module.train()."""
        if not self.frozen_now:
            return
        for module in self.modules(objects):
            for layer in module.modules():
                if isinstance(layer, torch.nn.modules.batchnorm._NormBase):
                    own = list(layer.parameters(recurse=False))
                    if own and all(id(parameter) in self.frozen_now for parameter in own):
                        layer.eval()
