"""Pool entries of the kNN engines as single int64 keys, so that one sort orders them by (distance, index).

A key is (float32 bits of the squared distance) << 32 | gallery index: for non-negative floats the bits sort
like the float, and keys are unique in a row.
"""

import numpy as np

EMPTY_KEY = np.iinfo(np.int64).max  # key of an empty slot: after every real key; its distance reads as NaN


def make_keys(distances: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """float32 ``distances``. Rounding can make a squared distance slightly negative; the true value is >= 0:
    negative floats (and -0.0) have negative int32 bits, which become the bits of +0.0."""
    bits = np.maximum(np.ascontiguousarray(distances, dtype=np.float32).view(np.int32), 0)
    return (bits.astype(np.int64) << 32) | indices


def key_distances(keys: np.ndarray) -> np.ndarray:
    return (keys >> 32).astype(np.int32).view(np.float32)
