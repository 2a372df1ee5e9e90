"""Sweeps: `python main.py sweep`, one worker of an Optuna study whose trials are run dirs.

space.py reads and checks the search space (no torch, no optuna: its errors come at once);
options.py holds the sweep command's own options; study.py where a study lives (its folder,
its storage, its lock); lease.py which worker owns a running trial; worker.py the worker's
loop; report.py the summary and the studies part of `runs`. docs/sweeps.md explains the
design (exactly --trials, takeover, pruning, seeds).
"""
