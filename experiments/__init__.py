"""Experiments (EXPERIMENTS registry): what the commands mean for one kind of task.

An experiment is one file here: a subclass of utils.engine.Experiment registered with
@EXPERIMENTS.register("<name>"), declaring its `commands` (train is the engine's; the others
are methods of the class), and providing datasets, build, step and optionally evaluate and
images. See docs/extending.md, "Add an experiment".
"""
