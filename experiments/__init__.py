"""Experiments (EXPERIMENTS registry): what train / val / test mean for one kind of task.
An experiment is a class with static `train(cfg)`, `val(cfg)` and `test(cfg)`."""
