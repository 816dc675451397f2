"""Finding run folders below a log folder, for eval_model.py and browse_results.py.

Symbolic links are followed, because clusters often keep runs on scratch space and link them into a log
folder; each real folder is visited once, so a link loop or two links to one run cannot repeat it.
"""

import os
from collections.abc import Callable
from pathlib import Path


def find_run_folders(root: Path, is_run: Callable[[list[str], list[str]], bool]) -> list[Path]:
    """Sorted folders under ``root`` (``root`` included) for which ``is_run(subfolder names, file names)``.

    A run folder's own subfolders (checkpoints, recluster) are not searched. The folders under ``root`` are
    walked before any link is followed, so a run reached both directly and through a link is listed under
    its direct path.
    """
    found: list[Path] = []
    seen: set[str] = set()
    links: list[str] = []

    def walk(top: str | Path, follow_links: bool) -> None:
        for folder, subfolders, files in os.walk(top, followlinks=follow_links):
            real = os.path.realpath(folder)
            if real in seen:
                subfolders[:] = []
                continue
            seen.add(real)
            if is_run(subfolders, files):
                found.append(Path(folder))
                subfolders[:] = []
                continue
            subfolders.sort()
            if not follow_links:  # os.walk lists links to folders without entering them
                paths = (os.path.join(folder, name) for name in subfolders)
                links.extend(path for path in paths if os.path.islink(path))

    walk(root, follow_links=False)
    for link in links:
        walk(link, follow_links=True)
    return sorted(found)
