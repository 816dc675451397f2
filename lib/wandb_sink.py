"""--wandb-enabled: each epoch's record also goes to Weights & Biases (METHOD.md §2.2, §10 #42).

One W&B run per run folder: its id is derived from the folder, so a resumed or extended run continues the
same W&B run instead of starting a new one, and W&B is initialised once per process, not per checkpoint load.
wandb is an optional dependency; experiment/validation.py refuses the flag when it is not installed.
"""

import hashlib
import re
from pathlib import Path

from lib.errors import UserFacingError

W_AND_B_PROJECT = "divide-and-conquer-dml"


class WandbSink:
    def __init__(self, run_path: Path, config: dict):
        import wandb

        folder = run_path.resolve()
        digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]  # same run name in two log folders: two runs
        try:
            self._run = wandb.init(
                project=W_AND_B_PROJECT,
                name=folder.name,
                id=f"{re.sub(r'[^A-Za-z0-9_-]', '_', folder.name)[:55]}-{digest}",  # W&B ids: [A-Za-z0-9_-]
                resume="allow",
                dir=str(folder),
                config=config,
            )
        except Exception as error:  # no login, no network, a bad setting: wandb's own exception types vary
            raise UserFacingError(
                f"--wandb-enabled: Weights & Biases could not start a run ({type(error).__name__}: {error}); "
                "log in with `wandb login`, or set WANDB_MODE=offline to record locally, or drop the flag."
            ) from error

    def log(self, record: dict) -> None:
        """The record's numbers (learning rates as ``lr/<group>``) at step epoch + 1 (epoch -1 is step 0)."""
        self._run.log(epoch_scalars(record), step=record["epoch"] + 1)

    def finish(self) -> None:
        self._run.finish()


def epoch_scalars(record: dict) -> dict[str, float]:
    scalars = {}
    for key, value in record.items():
        if isinstance(value, dict):
            scalars.update({f"{key}/{name}": item for name, item in value.items() if _is_number(item)})
        elif _is_number(value):
            scalars[key] = value
    return scalars


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
