"""The engine: the training loop (loop.py) and what a long run needs around it: train state and
checkpoints, resume, safe stop, the debug trigger, precision, distributed, run directories."""
