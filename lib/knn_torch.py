"""The torch kNN engine (CUDA, and ``torch+sklearn`` on the CPU): blocked matrix products with running pools.

Same contract as the CPU engine (lib/knn.py): the keys of every query's ``pool`` best candidates.
"""

import numpy as np
import torch
from torch import Tensor

GPU_BLOCK = 16384  # rows per block; a block of distances is at most BLOCK**2 floats
TORCH_CPU_BLOCK = 8192
TILE = 32  # columns whose minimum is compared first when few entries of a block can enter a pool


def torch_search(q: np.ndarray, g: np.ndarray, pool: int, chunk_size, device: torch.device, symmetric: bool):
    x = torch.from_numpy(q).to(device)
    y = x if g is q else torch.from_numpy(g).to(device)
    block = chunk_size or (GPU_BLOCK if device.type == "cuda" else TORCH_CPU_BLOCK)
    keys = _torch_self_search(x, block, pool) if symmetric else _torch_cross_search(x, y, pool, block)
    return keys.cpu().numpy()


_TORCH_EMPTY = torch.iinfo(torch.int64).max


def _torch_keys(distances: Tensor, indices: Tensor) -> Tensor:
    distances = torch.where(distances > 0, distances, torch.zeros((), dtype=distances.dtype, device=distances.device))
    return (distances.view(torch.int32).to(torch.int64) << 32) | indices


def _torch_key_distances(keys: Tensor) -> Tensor:
    return (keys >> 32).to(torch.int32).view(torch.float32)


def _augment(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rows [x, |x|^2, 1] and [-2x, 1, |x|^2]: one matmul then gives the squared distances, no extra pass."""
    norms = (x * x).sum(1, keepdim=True)
    ones = torch.ones_like(norms)
    return torch.cat([x, norms, ones], 1), torch.cat([-2 * x, ones, norms], 1)


def _block_bounds(n: int, block: int, pool: int) -> list[int]:
    """Nearly equal blocks of about ``block`` rows, starting at multiples of TILE, none narrower than ``pool``."""
    count = max(1, min(-(-n // block), n // (pool + TILE)))
    return [TILE * round(i * n / count / TILE) for i in range(count)] + [n]


def _torch_self_search(x: Tensor, block: int, pool: int) -> Tensor:
    left, right = _augment(x)
    bounds = _block_bounds(x.shape[0], block, pool)
    spans = list(zip(bounds[:-1], bounds[1:], strict=True))
    state = _RunningPool(x.shape[0], pool, x.device)
    for start, stop in spans:  # diagonal blocks first: every row gets a threshold from its own block
        distances = left[start:stop] @ right[start:stop].T
        state.set_threshold(start, distances)
        state.offer(start, start, distances, _dense_hits(distances, state.limit(start, stop)))
    for i, (start_i, stop_i) in enumerate(spans):
        for start_j, stop_j in spans[i + 1 :]:
            distances = left[start_i:stop_i] @ right[start_j:stop_j].T
            state.offer(start_i, start_j, distances, _tiled_row_hits(distances, state.limit(start_i, stop_i)))
            state.offer(start_j, start_i, distances.T, _tiled_column_hits(distances, state.limit(start_j, stop_j)))
    return state.keys


def _torch_cross_search(q: Tensor, g: Tensor, pool: int, block: int) -> Tensor:
    left, _ = _augment(q)
    _, right = _augment(g)
    rows = max(1, block * block // g.shape[0])
    state = _RunningPool(q.shape[0], pool, q.device)
    for start in range(0, q.shape[0], rows):
        distances = left[start : start + rows] @ right.T
        state.set_threshold(start, distances)
        state.offer(start, 0, distances, _dense_hits(distances, state.limit(start, start + distances.shape[0])))
    return state.keys


# A "hits" triple (targets, candidates, sorted): block coordinates of the entries at or below their target
# row's limit, and whether the targets come out sorted (then the merge needs no sort).


def _dense_hits(distances: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Hits by one comparison pass; ``limit`` (R, 1) holds the row limits."""
    rows, cols = torch.nonzero(distances <= limit, as_tuple=True)
    return rows, cols, True


def _tiled_row_hits(distances: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, bool]:
    """``_dense_hits`` for when few entries pass: compare the minima of row tiles first, then the hit tiles.

    One min-reduction over the block is cheaper than comparing and then scanning a mask of the whole block.
    """
    n_cols = distances.shape[1]
    tiled = n_cols - n_cols % TILE
    tiles = distances[:, :tiled].unflatten(1, (-1, TILE))
    rows, tile_ids = torch.nonzero(tiles.amin(2) <= limit, as_tuple=True)
    hit, offset = torch.nonzero(tiles[rows, tile_ids] <= limit[rows], as_tuple=True)
    rows, cols = rows[hit], tile_ids[hit] * TILE + offset
    if tiled == n_cols:
        return rows, cols, True
    tail_rows, tail_cols, _ = _dense_hits(distances[:, tiled:], limit)
    return torch.cat([rows, tail_rows]), torch.cat([cols, tail_cols + tiled]), False


def _tiled_column_hits(distances: Tensor, limit: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Hits of the block's columns (targets) among its rows; ``limit`` (C, 1) holds the column limits.

    Tiles run down the columns (a min over a transposed view is slow); targets come out sorted.
    """
    n_rows = distances.shape[0]
    tiled = n_rows - n_rows % TILE
    tiles = distances[:tiled].unflatten(0, (-1, TILE))
    cols, tile_ids = torch.nonzero((tiles.amin(1) <= limit.T).T.contiguous(), as_tuple=True)
    hit, offset = torch.nonzero(tiles[tile_ids, :, cols] <= limit[cols], as_tuple=True)
    cols, rows = cols[hit], tile_ids[hit] * TILE + offset
    if tiled == n_rows:
        return cols, rows, True
    tail_rows, tail_cols = torch.nonzero(distances[tiled:] <= limit.T, as_tuple=True)
    return torch.cat([cols, tail_cols]), torch.cat([rows, tail_rows + tiled]), False


class _RunningPool:
    """Per row, the keys of the ``size`` best candidates seen so far, unordered.

    A row's threshold is its current worst pooled distance: only block entries at or below it can enter, so
    a block costs one pass plus work on the few entries that pass. Entries equal to the threshold are offered
    too, so that exact ties are decided by index.
    """

    def __init__(self, n_rows: int, size: int, device: torch.device):
        self.size = size
        self.keys = torch.full((n_rows, size), _TORCH_EMPTY, dtype=torch.int64, device=device)
        self.threshold = torch.full((n_rows,), float("inf"), device=device)

    def limit(self, start: int, stop: int) -> Tensor:
        return self.threshold[start:stop, None]

    def set_threshold(self, row_start: int, distances: Tensor) -> None:
        """A first threshold from one block of at least ``size`` columns, before anything is pooled.

        The size-th smallest of the tile minima bounds the size-th smallest distance from above (the minima
        are distinct entries), and is found on TILE times fewer numbers.
        """
        width = max(1, min(TILE, distances.shape[1] // (2 * self.size)))
        tiled = distances.shape[1] - distances.shape[1] % width
        minima = distances[:, :tiled].unflatten(1, (-1, width)).amin(2)
        kth = torch.topk(minima, self.size, dim=1, largest=False).values[:, -1]
        self.threshold[row_start : row_start + distances.shape[0]] = kth

    def offer(self, row_start: int, col_start: int, distances: Tensor, hits: tuple[Tensor, Tensor, bool]) -> None:
        """Merge the ``hits`` of a block of distances whose rows and columns start at these pool indices."""
        rows, cols, rows_sorted = hits
        if rows.numel() == 0:
            return
        keys = _torch_keys(distances[rows, cols], cols + col_start)
        if not rows_sorted:
            order = torch.argsort(rows)
            rows, keys = rows[order], keys[order]
        per_row = torch.bincount(rows, minlength=distances.shape[0])
        touched = torch.nonzero(per_row, as_tuple=True)[0]
        compact = torch.cumsum(per_row > 0, 0) - 1
        slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(per_row, 0) - per_row)[rows]
        new = torch.full((touched.numel(), int(per_row.max())), _TORCH_EMPTY, dtype=torch.int64, device=rows.device)
        new[compact[rows], slot] = keys
        merged = torch.cat([self.keys[row_start + touched], new], 1)
        kth = torch.kthvalue(merged, self.size, dim=1, keepdim=True).values
        self.keys[row_start + touched] = merged[merged <= kth].view(-1, self.size)  # exactly ``size`` per row
        self.threshold[row_start + touched] = _torch_key_distances(kth[:, 0])
