"""Library log lines that are noise for peftkit's users, silenced before those libraries load."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def quiet_library_logs() -> None:
    """torchao, imported by transformers and peft for every model, logs that it lacks CUDA kernels, and torch logs a
    deprecation about one of torchao's enums; on a CPU machine that is noise. Loggers a user has configured are
    left alone."""
    for name in ("torchao", "torch.utils._pytree"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)


@contextmanager
def status(message: str) -> Iterator[None]:
    """``message`` on the terminal while the block runs (e.g. "loading model …"), erased when it ends; nothing
    when stderr is not a terminal, so logs and error output stay as they were."""
    shown = sys.stderr.isatty()
    if shown:
        sys.stderr.write(f"peftkit: {message} …")
        sys.stderr.flush()
    try:
        yield
    finally:
        if shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
