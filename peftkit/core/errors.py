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


class MissingExtraError(PeftkitError, ImportError):
    """A package that only some of peftkit needs is not installed; the message names the extra that brings it.

    An ``ImportError`` too, so ``except ImportError`` code that treats the package as optional keeps working.
    """


def require_extra(package: str, extra: str, purpose: str):
    """Import and return the top-level module ``package``, or raise ``MissingExtraError`` (one line) naming
    ``pip install 'peftkit[extra]'``; ``purpose`` says what needs the package ("it draws peftkit bench's plots")."""
    import importlib

    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as missing:
        if missing.name and missing.name.partition(".")[0] != package:
            raise  # the package is there but something it imports is not: that error says more
        raise MissingExtraError(f"{package} is not installed ({purpose}): pip install 'peftkit[{extra}]'") from None
