"""Seeds and derived random streams.

Data order and augmentation must not depend on worker count or process history, so they
draw from generators built from (seed, purpose, epoch, index) rather than from global state.
"""
import random
import zlib

import numpy as np

# Stream ids keep independent uses of one user seed apart (split vs order vs augmentation).
SPLIT, ORDER, AUGMENT, LOADER = 1, 2, 3, 4
RANK = 6  # per-rank streams under torchrun
# Streams by name (`stream`, the engine's ctx.generator): "fixed_noise" keeps the number the
# gan used before streams had names, so its pictures stay what they were; any other name
# gets a number from its CRC-32, stable across processes and Python versions.
NAMED = {"split": SPLIT, "order": ORDER, "augment": AUGMENT, "loader": LOADER, "fixed_noise": 5, "rank": RANK}


def stream(name):
    """The stream id of the random stream called `name`."""
    return NAMED.get(name) or (1 << 32) + zlib.crc32(name.encode("utf-8"))


def rng(*keys):
    """A numpy Generator that is a pure function of the integer `keys`."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def derive_seed(*keys):
    """A 63-bit integer seed that is a pure function of the integer `keys`."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_everything(seed):
    """Seed python, numpy and torch's global generators (weight init, dropout)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states():
    """Every global RNG state as plain data (a checkpoint must stay weights_only-loadable)."""
    import torch

    numpy_state = np.random.get_state()
    states = {
        "python": _plain(random.getstate()),
        "numpy": {"name": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restore what `rng_states()` returned."""
    import torch

    random.setstate(_tuples(states["python"]))
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
