"""Reproducibility by proof: `python main.py reproduce` and `runs --diff` (docs/reproducibility.md).

    options.py   the reproduce command's own options (no torch: `help` reads them)
    plan.py      the run, its saved config, manifest and fingerprints, read before torch loads
    rerun.py     the scratch run, trained by the engine with a Comparer as its trial, and the report
    compare.py   tensor-by-tensor comparison with a checkpoint the run kept
    run_diff.py  `runs --diff A B`: options, manifest items, best metrics, where fingerprints part

What a run records (manifest.json, fingerprints/) is the engine's: utils/engine/manifest.py,
utils/engine/fingerprints.py.
"""
