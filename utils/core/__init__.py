"""The core: errors, atomic file io, registries, seeds and random streams, fault injection.

Nothing here imports torch at module level, so `help` and config checks stay fast."""
