"""Learning-rate policies, chosen with --lr-policy, stepped once per epoch.

`book`: the book's rule. Its comment says "when val_loss increases", but its code compares
the epoch's mean *train* loss with the previous epoch's; we follow the code (train loss):
lr *= lr_decay whenever the epoch's train loss is higher than the one before.
`step`: lr *= lr_decay every lr_step epochs. `cosine`: cosine annealing to 0 over max_epoch.
`plateau`: lr *= lr_decay after lr_step epochs without val-loss improvement.
"""
import math


class LrPolicy:
    """Sets the optimizer's lr at each epoch end; its state is plain data for checkpoints."""

    def __init__(self, optimizer, cfg):
        self.optimizer = optimizer
        self.name = cfg.lr_policy
        self.base_lr = cfg.lr
        self.decay = cfg.lr_decay
        self.every = cfg.lr_step
        self.max_epoch = cfg.max_epoch
        self.lr = cfg.lr
        self.previous_train_loss = math.inf
        self.best_val_loss = math.inf
        self.bad_epochs = 0

    def step(self, epoch, train_loss, val_loss):
        """Call after epoch `epoch` (0-based) finished; returns the lr for the next epoch."""
        if self.name == "book":
            if train_loss > self.previous_train_loss:
                self.lr *= self.decay
            self.previous_train_loss = train_loss
        elif self.name == "step":
            self.lr = self.base_lr * self.decay ** ((epoch + 1) // self.every)
        elif self.name == "cosine":
            self.lr = 0.5 * self.base_lr * (1 + math.cos(math.pi * (epoch + 1) / self.max_epoch))
        elif self.name == "plateau":
            if val_loss < self.best_val_loss:
                self.best_val_loss, self.bad_epochs = val_loss, 0
            else:
                self.bad_epochs += 1
                if self.bad_epochs >= self.every:
                    self.lr *= self.decay
                    self.bad_epochs = 0
        self.apply()
        return self.lr

    def apply(self):
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def state_dict(self):
        keys = ("lr", "previous_train_loss", "best_val_loss", "bad_epochs")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state):
        for key, value in state.items():
            setattr(self, key, value)
        self.apply()
