"""Errors caused by the user's input: command-line tools print their message, never a traceback."""


class UserFacingError(Exception):
    """Bad input from the user (flags, files, data). The message names the problem and the fix."""

    def __init__(self, message: str = ""):
        super().__init__(_worker_free(message, type(self)))


class ConfigError(UserFacingError):
    """An impossible or malformed combination of command-line flags."""


class DatasetError(UserFacingError):
    """A dataset that is missing, laid out wrongly, or holds unreadable files."""


class CheckpointError(UserFacingError):
    """A checkpoint or record file that is missing, truncated, corrupt or hostile."""


def _worker_free(message, kind: type) -> str:
    """The original message of an error that a DataLoader worker raised.

    torch re-raises it in the main process as ``kind("Caught <Name> in DataLoader worker process N.\\nOriginal
    Traceback ...\\n<module>.<Name>: <message>")``; the user needs the message, not the worker's traceback.
    """
    if not (isinstance(message, str) and message.startswith("Caught ") and "\nOriginal Traceback" in message):
        return message
    marker = f"\n{kind.__module__}.{kind.__qualname__}: "
    position = message.rfind(marker)
    return message[position + len(marker) :].strip() if position >= 0 else message
