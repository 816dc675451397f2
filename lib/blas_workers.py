"""Worker threads for numpy work that mixes BLAS products with single-threaded numpy passes."""

import contextlib
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import threadpool_info, threadpool_limits


@contextlib.contextmanager
def blas_workers():
    """A runner of batches of independent tasks on as many threads as the BLAS would use, each with a
    single-threaded BLAS: sgemm is as fast per core, and one worker's comparisons and merges (single-threaded
    numpy) overlap the other's products instead of leaving a core idle."""
    workers = max(1, min((info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"), default=1))
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        yield lambda tasks: [future.result() for future in [pool.submit(task) for task in tasks]]


def blocks(start: int, stop: int, width: int) -> list[slice]:
    return [slice(first, min(first + width, stop)) for first in range(start, stop, width)]
