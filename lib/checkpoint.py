"""Checkpoints: atomic save, safe strict load (``weights_only=True``), corruption detection and fallback.

A checkpoint holds only tensors and plain containers. NumPy arrays are stored as tensors and restored as
arrays (see ``to_storable``/``from_storable``), so nothing needs pickling to load.

torch.save writes a zip archive with a CRC-32 per record, but torch.load does not check them: a flipped bit
inside a tensor loads silently. ``load_checkpoint`` checks every record's CRC first (about 0.2 s for 300 MB).
"""

import zipfile
from pathlib import Path

import numpy as np
import torch

from lib.atomic import atomic_write
from lib.errors import CheckpointError

FORMAT = "dnc-checkpoint-v1"
_ARRAY_TAG = "__ndarray__"


def to_storable(obj):
    """Convert NumPy arrays and scalars inside nested containers into tensors and plain Python values."""
    if isinstance(obj, np.ndarray):
        return {_ARRAY_TAG: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {key: to_storable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        converted = [to_storable(value) for value in obj]
        return converted if isinstance(obj, list) else tuple(converted)
    return obj


def from_storable(obj):
    """Inverse of ``to_storable``."""
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_TAG}:
            return obj[_ARRAY_TAG].numpy()
        return {key: from_storable(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [from_storable(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(from_storable(value) for value in obj)
    return obj


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` atomically; the previous file at ``path`` survives any failure."""
    payload = {"format": FORMAT, **to_storable(state)}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, *, hint: str = "") -> dict:
    """Load a checkpoint written by ``save_checkpoint``; refuse anything else with a readable message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.{hint}")
    try:
        with open(path, "rb") as handle:  # one opening for both, so that a file replaced meanwhile is not mixed in
            damaged = _first_damaged_record(handle)
            if damaged is not None:
                raise CheckpointError(
                    f"checkpoint {path} is corrupt: its record {damaged} does not match its checksum or header (a "
                    f"damaged disk or an interrupted copy).{hint}"
                )
            handle.seek(0)
            payload = torch.load(handle, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as error:  # truncated zip, bad pickle, hostile content: all refused the same way
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a checkpoint of this project "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}).{hint}"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by this project (format marker missing).{hint}")
    payload = dict(payload)
    payload.pop("format")
    return from_storable(payload)


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint holds, read without loading its tensors; None if missing or unreadable."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, truncated or foreign: no epoch to compare with
        return None
    epoch = payload.get("epoch") if isinstance(payload, dict) and payload.get("format") == FORMAT else None
    return epoch if type(epoch) is int else None


def _first_damaged_record(handle) -> str | None:
    """The name of the first zip record whose data does not match its stored CRC-32, or None.

    A CRC of 0 on a non-empty record means the writer skipped checksums (torch's ``compute_crc32`` off): not
    checkable, so not reported. Reading a record to its end makes zipfile compare the CRC.
    """
    with zipfile.ZipFile(handle) as archive:
        for record in archive.infolist():
            if record.CRC == 0 and record.file_size:
                continue
            try:
                with archive.open(record) as stream:
                    while stream.read(1 << 24):
                        pass
            except zipfile.BadZipFile:
                return record.filename
    return None
