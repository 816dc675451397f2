"""Deterministic seeds derived from the run seed and a position in the run (epoch, batch, recluster...).

Every random component draws from its own generator seeded this way, so nothing depends on worker
scheduling or on the order in which components were created.
"""

import numpy as np
import torch


def derive_seed(base_seed: int, *keys: int | str) -> int:
    """A 63-bit seed that depends only on ``base_seed`` and the ``keys`` (ints or short strings)."""
    words = [int(base_seed) & 0xFFFFFFFF, int(base_seed) >> 32 & 0xFFFFFFFF]
    for key in keys:
        if isinstance(key, str):
            words.extend(key.encode("utf-8"))
            words.append(0xFFFFFFFF)
        else:
            key = int(key)
            words.extend([key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF, 1 if key < 0 else 0])
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int(state[0]) | (int(state[1] & 0x7FFFFFFF) << 32)


def numpy_generator(base_seed: int, *keys: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(base_seed, *keys))


def torch_generator(base_seed: int, *keys: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(base_seed, *keys))
    return generator
