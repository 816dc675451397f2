"""Read-only summaries of run folders (METHOD.md §9) for ``browse_results.py``.

Everything here tolerates partial and damaged runs: a problem becomes a note on the run, never an exception,
so one broken folder cannot hide the others. Only JSON and ``np.load(allow_pickle=False)`` are used: nothing
found in a run folder is ever unpickled, and nothing is written.
"""

import datetime as dt
import itertools
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.errors import CheckpointError
from lib.recall_ks import RECALL_KS
from lib.run_folders import find_run_folders
from lib.runs import EPOCHS_FILE, STATES, STATUS_FILE, epoch_tag, read_epoch_records, read_json

CONFIG_FILE = "config.json"
RECLUSTER_DIR = "recluster"
SUMMARY_METRICS = ("NMI", "MAP@R", "mARP")
RECLUSTER_ARRAYS = (
    "assignment",
    "labels",
    "sizes",
    "n_classes",
    "n_removed",
    "permutation",
    "cost_before",
    "cost_after",
    "nmi_prev",
    "split",
    "merges",
    "masks",
)
STALE_AFTER_HOURS = 2.0  # status.json is rewritten at least once per epoch; older than this looks killed
_NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, zlib.error)


@dataclass
class RunSummary:
    """What the results table shows for one run, plus the records that ``--plot`` draws."""

    path: Path
    name: str
    dataset: str | None = None
    k_final: int | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    selection: str | None = None  # "R@1" (selection on the test set) or "val/R@1"
    recall_ks: tuple[int, ...] = ()
    metrics: dict[str, float | None] = field(default_factory=dict)
    status: str = "unknown"
    notes: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    recluster_files: dict[int, Path] = field(default_factory=dict)


def find_run_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (``root`` included, links followed) that hold ``config.json`` or ``epochs.jsonl``."""
    return find_run_folders(root, lambda subfolders, files: CONFIG_FILE in files or EPOCHS_FILE in files)


def as_number(value) -> float | None:
    """A finite JSON number as float; None for null, booleans, strings and anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def select_best(records: list[dict]) -> tuple[dict | None, str]:
    """The best record and the selection key (METHOD.md §8.5).

    ``val/R@1`` when any trained epoch recorded it, else ``R@1``; best by strict improvement over epochs >= 0
    in epoch order, so the first occurrence of the maximum wins and the untrained epoch -1 never counts.
    """
    trained = sorted((record for record in records if record["epoch"] >= 0), key=lambda record: record["epoch"])
    key = "val/R@1" if any(as_number(record.get("val/R@1")) is not None for record in trained) else "R@1"
    best, best_value = None, -math.inf
    for record in trained:
        value = as_number(record.get(key))
        if value is not None and value > best_value:
            best, best_value = record, value
    return best, key


def describe_status(status: dict | None, now: dt.datetime) -> tuple[str, list[str]]:
    """The status column and notes from ``status.json``; a long-silent ``running`` is shown as stale."""
    if status is None:
        return "unknown", []
    state = status.get("state")
    if state not in STATES:
        return "unknown", [f"{STATUS_FILE} has unknown state {state!r}"]
    notes = [f"{state}: {status['message']}"] if status.get("message") and state != "running" else []
    if state != "running":
        return state, notes
    try:
        updated = dt.datetime.fromisoformat(str(status.get("updated")))
    except ValueError:
        return state, [f"{STATUS_FILE} 'updated' is not an ISO 8601 time"]
    if updated.tzinfo is None:
        updated = updated.astimezone()
    hours = (now - updated).total_seconds() / 3600
    return (f"running (stale {hours:.1f}h)" if hours > STALE_AFTER_HOURS else state), notes


def read_recluster(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one ``recluster/e{E}.npz`` (METHOD.md §9.2), checked; CheckpointError when damaged.

    The zip's CRCs are verified first, so damage anywhere in the file is caught before numpy parses a header.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
        if bad_member is not None:
            raise CheckpointError(f"{path.name}: member {bad_member} fails its CRC check")
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in RECLUSTER_ARRAYS if name not in npz.files]
            if missing:
                raise CheckpointError(f"{path.name}: arrays missing: {', '.join(missing)}")
            arrays = {name: npz[name] for name in RECLUSTER_ARRAYS}
    except CheckpointError:
        raise
    except _NPZ_ERRORS as error:
        raise CheckpointError(f"{path.name} unreadable ({type(error).__name__}: {error})") from error
    masks, sizes = arrays["masks"], arrays["sizes"]
    if masks.ndim != 2 or sizes.ndim != 1 or masks.shape[0] != sizes.shape[0]:
        raise CheckpointError(f"{path.name}: masks {masks.shape} and sizes {sizes.shape} disagree on K")
    if masks.dtype.kind not in "biuf" or not np.isfinite(masks).all():
        raise CheckpointError(f"{path.name}: masks are not finite numbers (dtype {masks.dtype})")
    if sizes.dtype.kind not in "iuf" or not (np.isfinite(sizes) & (sizes >= 0) & (sizes == np.round(sizes))).all():
        raise CheckpointError(f"{path.name}: cluster sizes are not counts (dtype {sizes.dtype})")
    return arrays


def recluster_paths(run_dir: Path) -> dict[int, Path]:
    """``recluster/e{E}.npz`` by epoch E; files moved aside on resume have other names and are skipped."""
    paths = {}
    for path in (run_dir / RECLUSTER_DIR).glob("e*.npz"):
        try:
            epoch = int(path.stem[1:])
        except ValueError:
            continue
        if path.name == f"e{epoch_tag(epoch)}.npz":
            paths[epoch] = path
    return dict(sorted(paths.items()))


def _unique_epochs(records: list[dict]) -> tuple[list[dict], list[str]]:
    """One record per epoch (the last line wins, as a resume appends after moving stale lines aside)."""
    by_epoch: dict[int, dict] = {}
    notes = []
    for record in records:
        if record["epoch"] in by_epoch:
            notes.append(f"epoch {record['epoch']} recorded twice; the last line is used")
        by_epoch[record["epoch"]] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)], notes


def _recall_ks(dataset: str | None, record: dict | None) -> tuple[int, ...]:
    if dataset in RECALL_KS:
        return RECALL_KS[dataset]
    keys = record or {}
    return tuple(sorted(int(key[2:]) for key in keys if key.startswith("R@") and key[2:].isdigit()))


def _config_facts(run_dir: Path, summary: RunSummary) -> None:
    path = run_dir / CONFIG_FILE
    config = read_json(path)
    if config is None:
        summary.notes.append(f"{CONFIG_FILE} {'unreadable' if path.exists() else 'missing'}")
        return
    dataset = config.get("dataset")
    summary.dataset = dataset if isinstance(dataset, str) else None
    derived = config.get("derived") if isinstance(config.get("derived"), dict) else {}
    k_final = derived.get("k_final", config.get("nb_clusters"))
    summary.k_final = k_final if isinstance(k_final, int) and not isinstance(k_final, bool) else None


def _record_facts(run_dir: Path, summary: RunSummary) -> None:
    records, notes = read_epoch_records(run_dir)
    records, duplicate_notes = _unique_epochs(records)
    summary.records = records
    summary.notes += notes + duplicate_notes
    trained = [record["epoch"] for record in records if record["epoch"] >= 0]
    summary.epochs_run = max(trained) + 1 if trained else 0
    if not trained:
        summary.notes.append("no epoch >= 0 recorded yet")
    elif len(trained) < summary.epochs_run:
        missing = sorted(set(range(summary.epochs_run)) - set(trained))
        summary.notes.append(f"{EPOCHS_FILE} lacks epoch(s) {_spans(missing)}")
    best, summary.selection = select_best(records)
    summary.recall_ks = _recall_ks(summary.dataset, best)
    keys = [f"R@{k}" for k in summary.recall_ks] + list(SUMMARY_METRICS)
    summary.notes += _bad_values(records, dict.fromkeys(["R@1", "val/R@1", *keys]))
    if best is None:
        if trained:
            summary.notes.append(f"no {summary.selection} recorded")
        return
    summary.best_epoch = best["epoch"]
    summary.metrics = {key: as_number(best.get(key)) for key in keys}
    if summary.k_final is None and as_number(records[-1].get("K")) is not None:
        summary.k_final = int(records[-1]["K"])


def _bad_values(records: list[dict], keys) -> list[str]:
    """A note on recorded metric values that are neither null nor a finite number (they are shown blank)."""
    bad = [
        f"epoch {record['epoch']} {key}={record[key]!r}"
        for record in records
        for key in keys
        if record.get(key) is not None and as_number(record[key]) is None
    ]
    if not bad:
        return []
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return [f"{EPOCHS_FILE} has values that are not numbers: {', '.join(bad[:3])}{more}"]


def _spans(numbers: list[int]) -> str:
    """Sorted [3, 4, 7] -> "3-4, 7": consecutive numbers share their offset from their position."""
    runs = [[number for _, number in run] for _, run in itertools.groupby(enumerate(numbers), lambda p: p[1] - p[0])]
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs)


def _recluster_facts(run_dir: Path, summary: RunSummary) -> None:
    summary.recluster_files = recluster_paths(run_dir)
    if summary.records and -1 not in summary.recluster_files:
        summary.notes.append(f"{RECLUSTER_DIR}/e{epoch_tag(-1)}.npz missing")
    for path in summary.recluster_files.values():
        try:
            read_recluster(path)
        except CheckpointError as error:
            summary.notes.append(str(error))


def summarise_run(run_dir: Path, name: str, now: dt.datetime) -> RunSummary:
    """Everything the table shows for one run folder; every problem found becomes a note."""
    summary = RunSummary(path=run_dir, name=name)
    _config_facts(run_dir, summary)
    _record_facts(run_dir, summary)
    _recluster_facts(run_dir, summary)
    status_path = run_dir / STATUS_FILE
    status = read_json(status_path)
    if status is None:
        summary.notes.append(f"{STATUS_FILE} {'unreadable' if status_path.exists() else 'missing'}")
    summary.status, status_notes = describe_status(status, now)
    summary.notes += status_notes
    return summary
