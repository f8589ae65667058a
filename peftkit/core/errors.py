"""Errors that describe bad input, not bugs.

Everything peftkit raises because of what a user handed it — a config value, a module pattern, a file,
a data column — is a ``PeftkitError``. It subclasses ``ValueError`` so plain ``except ValueError`` code
keeps working, and the CLI turns it into a one-line message with exit code 2.
"""


class PeftkitError(ValueError):
    """Bad input from the user; the message names the problem."""


class ConfigError(PeftkitError):
    """A config field holds a value peftkit cannot use."""


class CheckpointError(PeftkitError):
    """An adapter folder or file is missing, corrupt or does not fit the model."""


class DataError(PeftkitError):
    """A data file is missing, empty or lacks what the task needs."""
