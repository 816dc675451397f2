"""An exclusive lock on a run folder, held by the training process that writes it.

Two processes writing one folder interleave their records: the same command started twice, or a scheduler
requeueing a job whose first copy still runs. ``flock`` locks end with the process that holds them, so a
killed run never leaves a stale lock behind. File systems without locks (some Lustre mounts) and platforms
without ``fcntl`` run unlocked.
"""

import errno
import os
import socket
from pathlib import Path

from lib.errors import ConfigError

LOCK_FILE = ".lock"
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}  # ENOTSUP: macOS
_HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}


class ReadOnlyRunFolder(ConfigError):
    """The lock file cannot be made: fine for a command that only reports on a finished run."""


def lock_run_folder(folder: Path):
    """Take the folder's lock: the open file that holds it (close it to release), or None where unsupported."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (kept open: it holds the lock)
    except OSError as error:
        raise ReadOnlyRunFolder(
            f"cannot write in the run folder {folder} ({error.strerror}); check its permissions, or choose another "
            "--log-dir."
        ) from error
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = _read_holder(handle)
        handle.close()
        if error.errno in _UNSUPPORTED:
            return None
        if error.errno not in _HELD:
            raise
        raise ConfigError(
            f"the run folder {folder} is in use by {holder}: a training process is still writing it. Wait for it "
            "to end or stop it, then run the command again (it resumes); for a separate run choose another -i or "
            "--log-dir."
        ) from error
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _read_holder(handle) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"
