"""Adapter folders in peft's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are peft's: ``base_model.model.<module path>.<tensor name>`` with the adapter name left out; an
adapter other than ``default`` lives in a sub-folder named after it. Writes are atomic (a temporary
file in the same folder, then ``os.replace``), so a crash never leaves a half-written file under the
real name. Weights load from safetensors only; a legacy ``adapter_model.bin`` is read with
``torch.load(weights_only=True)``, which refuses anything but tensors.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peftkit.core.errors import CheckpointError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
COMPOSITION_NAME = "peftkit_composition.json"
FUSION_NAME = "peftkit_fusion.safetensors"
KEY_PREFIX = "base_model.model."
PROMPT_KEY_PREFIX = "base_model."  # modules saved next to a prompt-learning adapter


def adapter_folder(root: str | os.PathLike, adapter_name: str) -> Path:
    """peft's layout: the ``default`` adapter at the root, any other in ``root/<name>``."""
    root = Path(root)
    return root if adapter_name == "default" else root / adapter_name


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, payload: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

    _atomic_write(path, write)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from None


def write_adapter(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write weights first, then the config, each atomically."""
    write_tensors(folder / WEIGHTS_NAME, tensors)
    write_json(folder / CONFIG_NAME, config)


def read_json(path: Path, what: str = "file") -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(payload).__name__}")
    return payload


def read_adapter_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: adapter folder not found (peftkit loads local folders only)")
    payload = read_json(folder / CONFIG_NAME, "adapter config")
    if "peft_type" not in payload:
        raise CheckpointError(f"{folder / CONFIG_NAME}: no 'peft_type' field; is this an adapter folder?")
    return payload


def read_adapter_weights(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], Path]:
    folder = Path(folder)
    path = folder / WEIGHTS_NAME
    if path.is_file():
        return read_tensors(path), path
    legacy = folder / LEGACY_WEIGHTS_NAME
    if legacy.is_file():
        try:
            state = torch.load(legacy, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            raise CheckpointError(f"{legacy}: cannot read weights ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{legacy}: expected a mapping of names to tensors")
        return state, legacy
    raise CheckpointError(f"{folder}: no {WEIGHTS_NAME} (or legacy {LEGACY_WEIGHTS_NAME}) found")


def check_tensors(
    path: Path, tensors: dict[str, torch.Tensor], required: dict[str, tuple], optional: dict[str, tuple]
) -> None:
    """Every required key present, optional ones allowed, all with the right shape, nothing else; an error
    names the file and the key."""
    for key in required:
        if key not in tensors:
            raise CheckpointError(f"{path}: missing key '{key}'")
    allowed = {**optional, **required}
    for key, tensor in tensors.items():
        if key in allowed and tuple(tensor.shape) != tuple(allowed[key]):
            raise CheckpointError(
                f"{path}: key '{key}' has shape {tuple(tensor.shape)}, the model needs {tuple(allowed[key])}"
            )
    unexpected = sorted(set(tensors) - set(allowed))
    if unexpected:
        raise CheckpointError(
            f"{path}: unexpected key '{unexpected[0]}' ({len(unexpected)} in all); was the adapter made for "
            f"another model or config?"
        )
