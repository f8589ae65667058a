"""Where a command writes, checked before any work starts, and written so that nothing the user had is damaged.

``check_output`` refuses (one line each) an output that is an existing file, a folder that cannot be written,
one of the command's own inputs (a model or adapter folder), and a folder holding another run's resumable
checkpoints unless the run resumes them or ``--overwrite`` is given. ``staged`` writes a folder aside and
renames it into place, so a failed or interrupted write leaves the old folder (or none) as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peftkit.core.errors import ConfigError

CHECKPOINTS = "checkpoints"  # the sub-folder of a training output that holds resumable checkpoints


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_output(output: str | os.PathLike, inputs: tuple = (), flag: str = "--output",
                 resume: bool = False, overwrite: bool = False, replaces_folder: bool = False) -> Path:
    """The output folder, resolved, or a ``ConfigError`` naming why it cannot be written. ``inputs``: the
    command's input folders / files, never written over. ``replaces_folder``: the command writes a whole
    folder (a merged or reduced model), so an existing non-empty one needs ``--overwrite``."""
    target = Path(output).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} {output} is an existing file, not a folder")
    for source in inputs:
        if source is not None and Path(source).expanduser().resolve() == target:
            raise ConfigError(f"{flag} {output} is this command's input; write to another folder")
    existing = _nearest_existing(target)
    if not existing.is_dir():
        raise ConfigError(f"{flag} {output}: {existing} is a file, so the folder cannot be made")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {output}: cannot write in {existing} ({exc.strerror})") from None
    checkpoints = target / CHECKPOINTS
    if not resume and not overwrite and checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise ConfigError(f"{flag} {output} holds another run's checkpoints ({checkpoints}); pass --resume to "
                          f"continue that run or --overwrite to replace them")
    if replaces_folder and not overwrite and target.is_dir() and any(target.iterdir()):
        raise ConfigError(f"{flag} {output} is a folder that is not empty; pass --overwrite to replace it")
    return target


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A scratch folder beside ``target`` to write into; renamed to ``target`` (replacing it) when the block
    ends without an error, removed otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        yield scratch
        if target.exists():
            aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-old-"))
            os.replace(target, aside / target.name)
            os.replace(scratch, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
