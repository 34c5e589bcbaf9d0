"""Errors t2i_align raises on purpose, for bad input or config.

Each message already says what is wrong, where (the config key, file, row or column) and what to
do, so the entry points (t2i_align/cli.py) print it as one line and exit non-zero instead of
showing a traceback; HYDRA_FULL_ERROR=1 shows the full traceback. Each class also derives from
the builtin a caller would expect (ValueError, FileNotFoundError, ...), so `except ValueError`
keeps working. Errors that are not UserError are bugs or library failures: their traceback is
always shown.
"""


class UserError(Exception):
    """Base of every error the project raises on purpose for bad input or config."""


class InputError(UserError, ValueError):
    """A value is wrong: a config key, an argument, a data row, a table's columns."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file, folder, checkpoint or hub id named by the user is not there."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that the chosen option needs is not installed."""


class CheckpointMismatchError(UserError, RuntimeError):
    """A weights file does not match the model it is loaded into."""
