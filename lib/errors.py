"""Errors caused by the user's input: command-line tools print their message, never a traceback."""


class UserFacingError(Exception):
    """Bad input from the user (flags, files, data). The message names the problem and the fix."""


class ConfigError(UserFacingError):
    """An impossible or malformed combination of command-line flags."""


class DatasetError(UserFacingError):
    """A dataset that is missing, laid out wrongly, or holds unreadable files."""


class CheckpointError(UserFacingError):
    """A checkpoint or record file that is missing, truncated, corrupt or hostile."""
