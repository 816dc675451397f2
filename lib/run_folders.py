"""Finding run folders below a log folder, for eval_model.py and browse_results.py.

Symbolic links are followed, because clusters often keep runs on scratch space and link them into a log
folder; each real folder is visited once, so a link loop or two links to one run cannot repeat it.
"""

import os
from collections.abc import Callable
from pathlib import Path


def find_run_folders(root: Path, is_run: Callable[[list[str], list[str]], bool]) -> list[Path]:
    """Sorted folders under ``root`` (``root`` included) for which ``is_run(subfolder names, file names)``.

    A run folder's own subfolders (checkpoints, recluster) are not searched. A run reached both directly and
    through a link is listed once, under its direct path when both lie under ``root``.
    """
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        if is_run(subfolders, files):
            found.append(Path(folder))
            subfolders[:] = []
        else:  # real folders first, so that a run that is also linked elsewhere is listed under its own name
            subfolders.sort(key=lambda name: (os.path.islink(os.path.join(folder, name)), name))
    return sorted(found)
