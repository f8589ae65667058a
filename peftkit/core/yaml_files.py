"""YAML / JSON option files: read as a mapping, with one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path

import yaml

from peftkit.core.errors import ConfigError


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict:
    """The file's top-level mapping; ``what`` names the file in errors, ``expected`` says what it should map."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected {expected}")
    return values
