"""Learning-rate policies (--lr-policy), stepped once per epoch by the engine.

Every policy reads the current lr from the optimizer and multiplies it, so an lr typed at
the live-debugger prompt (`optimizer.param_groups[0]['lr'] = 1e-4`, the book's 6.2 use case)
stays in force: it is the new starting point, never overwritten by a stored copy.

`book`: the book's rule. Its comment says "when val_loss increases", but its code compares
the epoch's mean *train* loss with the previous epoch's; we follow the code (train loss):
lr *= lr_decay whenever the epoch's train loss is higher than the one before.
`step`: torch's StepLR (lr *= lr_decay every lr_step epochs). `cosine`: torch's
CosineAnnealingLR to 0 over max_epoch (a resume with a larger --max-epoch stretches the rest
of the curve to the new end, without a jump). `plateau`: torch's ReduceLROnPlateau on --monitor
(lr *= lr_decay after lr_step epochs without improvement). `constant`: never changes it.
"""
import math

import torch

from utils.core.errors import UsageError


class BookDecay:
    """lr *= decay when the epoch's train loss rose; a scheduler with plain-data state."""

    def __init__(self, optimizer, decay):
        self.optimizer, self.decay = optimizer, decay
        self.previous_train_loss = math.inf

    def step(self, train_loss):
        if train_loss > self.previous_train_loss:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.decay
        self.previous_train_loss = train_loss

    def state_dict(self):
        return {"previous_train_loss": self.previous_train_loss}

    def load_state_dict(self, state):
        self.previous_train_loss = state["previous_train_loss"]


class LrPolicy:
    """One optimizer's policy. `step(train_loss, metrics)` after each epoch: `train_loss` is
    the epoch's mean of the experiment's main loss, `metrics` its evaluation (or None)."""

    def __init__(self, optimizer, cfg, monitor_mode=None):
        self.optimizer, self.name, self.monitor, self.max_epoch = optimizer, cfg.lr_policy, cfg.monitor, cfg.max_epoch
        if self.name == "book":
            self.scheduler = BookDecay(optimizer, cfg.lr_decay)
        elif self.name == "step":
            self.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step, gamma=cfg.lr_decay)
        elif self.name == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.max_epoch)
        elif self.name == "plateau":
            if monitor_mode is None:
                raise UsageError(f"--lr-policy=plateau needs a validation metric; experiment {cfg.experiment} has none: "
                                 f"use --lr-policy=step, cosine or constant")
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=monitor_mode, factor=cfg.lr_decay, patience=cfg.lr_step - 1)
        else:
            self.scheduler = None

    def step(self, train_loss, metrics):
        """Move to the next epoch's lr; returns it."""
        if self.name == "book":
            self.scheduler.step(train_loss)
        elif self.name == "plateau":
            self.scheduler.step(metrics[self.monitor])
        elif self.scheduler is not None:
            self.scheduler.step()
        return self.lr

    @property
    def lr(self):
        """The base lr: the first group's, less its --param-groups / --layer-decay multiplier."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("lr_mult", 1.0)

    def state_dict(self):
        return {"name": self.name, "scheduler": self.scheduler.state_dict() if self.scheduler else None}

    def load_state_dict(self, state):
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint holds lr policy {state.get('name')!r}, this run uses {self.name!r}")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.name == "cosine":
            self.scheduler.T_max = self.max_epoch  # --max-epoch may change on resume
