"""The engine: the training loop (loop.py), the contract an experiment implements (experiment.py)
and what a long run needs around it: train state and checkpoint contents (state.py), checkpoints,
resume, safe stop, the debug trigger, precision, distributed, run directories."""
