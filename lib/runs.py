"""The run folder of METHOD.md §9: records, status, logging, and moving stale files aside.

Only rank 0 creates a ``RunFolder``; every write goes through atomic helpers so a kill never corrupts a record.
"""

import contextlib
import datetime as dt
import json
import logging
import math
import shutil
from pathlib import Path

from lib.atomic import append_line, atomic_write, atomic_write_json
from lib.errors import CheckpointError, ConfigError
from lib.run_lock import lock_run_folder

EPOCHS_FILE = "epochs.jsonl"
STATUS_FILE = "status.json"
STATES = ("running", "finished", "failed", "interrupted")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def epoch_tag(epoch: int) -> str:
    """Zero-padded epoch of at least 4 characters: 9 -> '0009', -1 -> '-001' (METHOD.md §9.2)."""
    return f"{epoch:04d}"


def json_safe(value):
    """Replace non-finite floats by None, recursively, so records are strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def move_aside(path: Path) -> Path:
    """Rename ``path`` to a unique sibling name; records are moved, never deleted."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.moved-{stamp}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{path.name}.moved-{stamp}-{counter}")
        counter += 1
    shutil.move(str(path), str(target))
    return target


@contextlib.contextmanager
def stop_on_write_failure(what: str):
    """Turn a failed write (disk full, permission denied) into one clear message that stops the run.

    The atomic writers leave the previous files intact, so the run can be resumed once the cause is fixed.
    """
    try:
        yield
    except OSError as error:
        raise CheckpointError(
            f"could not write {what}: {error.strerror or error}. The previous checkpoints and records are intact; "
            "free disk space or fix permissions, then run the same command to resume."
        ) from error


def read_epoch_records(run_dir: Path) -> tuple[list[dict], list[str]]:
    """All parseable lines of ``epochs.jsonl`` and a note for every damaged one (never raises on damage)."""
    path = Path(run_dir) / EPOCHS_FILE
    records, notes = [], []
    if not path.is_file():
        return records, [f"{EPOCHS_FILE} missing"]
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return records, [f"{EPOCHS_FILE} unreadable: {error}"]
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"{EPOCHS_FILE} line {number} is not valid JSON")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            notes.append(f"{EPOCHS_FILE} line {number} has no integer 'epoch'")
            continue
        records.append(record)
    return records, notes


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when missing or damaged."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class RunFolder:
    """Paths and writers of one run folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.recluster_dir = self.path / "recluster"
        self.masks_dir = self.path / "masks"
        self._status: dict = {}
        self._lock = None
        self.lock_unsupported = False

    def lock(self) -> None:
        """Hold the folder's lock until ``unlock`` (lib/run_lock.py): one training process per folder."""
        if self._lock is None:
            self._lock = lock_run_folder(self.path)
            self.lock_unsupported = self._lock is None

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def create(self, *, fresh: bool = False, replace_existing: bool = False) -> Path | None:
        """Make the folder and take its lock; returns where a replaced folder went.

        ``fresh``: the folder must not exist yet; if another process made it since this one planned the run, that
        process owns it. ``replace_existing`` (--overwrite): an existing folder is moved aside first, here, once
        the run is known to start, so that a command that fails earlier leaves the old run in place.
        """
        moved = None
        if replace_existing and self.path.exists():
            moved = move_aside(self.path)
            self.unlock()
        try:
            self.path.mkdir(parents=True, exist_ok=not (fresh or replace_existing))
            self.lock()
            for folder in (self.checkpoints, self.recluster_dir):
                folder.mkdir(exist_ok=True)
        except FileExistsError as error:
            raise ConfigError(
                f"the run folder {self.path} was created by another process after this command started: is the "
                "same command running twice? Choose another -i or --log-dir for a separate run."
            ) from error
        except OSError as error:
            raise ConfigError(
                f"cannot create the run folder {self.path} ({error.strerror}); choose another --log-dir or fix the "
                "permissions."
            ) from error
        return moved

    @property
    def epochs_file(self) -> Path:
        return self.path / EPOCHS_FILE

    def checkpoint_path(self, name: str) -> Path:
        return self.checkpoints / f"{name}.pt"

    def recluster_path(self, epoch: int) -> Path:
        return self.recluster_dir / f"e{epoch_tag(epoch)}.npz"

    def write_json(self, name: str, obj: dict) -> None:
        atomic_write_json(self.path / name, json_safe(obj))

    def append_epoch(self, record: dict) -> None:
        append_line(self.epochs_file, json.dumps(json_safe(record), allow_nan=False))

    def epoch_records(self) -> list[dict]:
        return read_epoch_records(self.path)[0]

    def set_status(
        self,
        state: str,
        *,
        message: str | None = None,
        last_epoch: int | None = None,
        nb_epochs: int | None = None,
        started: bool = False,
    ) -> None:
        assert state in STATES, state
        timestamp = now_iso()
        status = dict(self._status)
        if started or "started" not in status:
            status["started"] = timestamp
        status.update(state=state, message=message, updated=timestamp, ended=None if state == "running" else timestamp)
        if last_epoch is not None:
            status["last_epoch"] = last_epoch
        status.setdefault("last_epoch", None)
        if nb_epochs is not None:
            status["nb_epochs"] = nb_epochs
        status.setdefault("nb_epochs", None)
        self._status = status
        atomic_write_json(self.path / STATUS_FILE, status)

    def finish_if_complete(self, trained_epochs: int) -> bool:
        """Mark the run ``finished`` if it trained every epoch its status planned but says otherwise (killed
        between its last record and the final status write); True if the status changed."""
        status = read_json(self.path / STATUS_FILE) or {}
        planned = status.get("nb_epochs")
        if status.get("state") == "finished" or not isinstance(planned, int) or trained_epochs < planned:
            return False
        self._status = status
        self.set_status("finished", last_epoch=trained_epochs - 1)
        return True

    def reconcile_records(self, last_epoch: int, record_of_last: dict | None, *, reclustered_epoch: int) -> list[Path]:
        """Make ``epochs.jsonl`` agree with a checkpoint of ``last_epoch`` (METHOD.md §9.3).

        Lines of later epochs go to a side file; a missing line for ``last_epoch`` is appended from the
        checkpoint. Recluster files of epochs after ``reclustered_epoch`` (the checkpoint's epoch: a mid-epoch
        checkpoint holds that epoch's recluster) are moved aside, since those reclusters will be redone.
        """
        moved: list[Path] = []
        records = self.epoch_records()
        keep = [record for record in records if record["epoch"] <= last_epoch]
        later = [record for record in records if record["epoch"] > last_epoch]
        missing_last = record_of_last is not None and all(r["epoch"] != last_epoch for r in keep)
        if later:
            side = self.path / f"{EPOCHS_FILE}.after-e{epoch_tag(last_epoch)}.{dt.datetime.now():%Y%m%d-%H%M%S}"
            side.write_text("".join(json.dumps(record) + "\n" for record in later), encoding="utf-8")
            moved.append(side)
        if missing_last:
            keep.append(record_of_last)
        if later or missing_last:
            text = "".join(json.dumps(json_safe(record), allow_nan=False) + "\n" for record in keep)
            atomic_write(self.epochs_file, lambda handle: handle.write(text.encode("utf-8")))
        for npz in sorted(self.recluster_dir.glob("e*.npz")):
            try:
                epoch = int(npz.stem[1:])
            except ValueError:
                continue
            if epoch > reclustered_epoch:
                moved.append(move_aside(npz))
        return moved


def setup_logger(log_file: Path | None, *, verbose: bool = False, name: str = "dnc") -> logging.Logger:
    """A logger that prints to the console and, for rank 0, to ``log.txt``."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file is not None:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger
