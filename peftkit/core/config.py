"""Config base classes: dataclasses with validation, JSON round-trip and forgiving reads.

A method's config is a dataclass decorated with :func:`config_dataclass`; it names its ``peft_type``
(peft's spelling, e.g. ``"LORA"``) so that ``adapter_config.json`` reads the same in peft and peftkit.

Two ways in, two levels of strictness:

* what a user writes (constructor, YAML, CLI) is strict: an unknown field is a ``ConfigError``
  naming it, with the closest known name as a hint;
* an ``adapter_config.json`` written by peft or by a newer peftkit is forgiving
  (:meth:`PeftConfig.from_saved`): a field peft knows and peftkit does not is dropped silently at peft's
  default for it, and is an error naming it at any other value (it would change the computation); a
  field neither knows (a newer version's) is dropped with one warning naming it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import enum
import functools
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from peft import __version__ as peft_version
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from peftkit.core.checkpoint import CONFIG_NAME, read_adapter_config, write_json
from peftkit.core.errors import ConfigError
from peftkit.core.field_types import check_field_types
from peftkit.core.module_roles import role_targets

# Fields peft writes that describe the file, not the computation.
_METADATA_FIELDS = {"peft_version", "auto_mapping", "peftkit_version"}


_CONFIG_CLASSES: dict[str, type] = {}  # peft_type -> the config class that reads it (filled by register_method)


def register_config_class(config_cls: type) -> None:
    _CONFIG_CLASSES.setdefault(config_cls.peft_type, config_cls)


def config_class_for_peft_type(peft_type: str) -> type:
    if peft_type not in _CONFIG_CLASSES:
        raise ConfigError(f"peft_type '{peft_type}' is not supported by peftkit (supported: "
                          f"{', '.join(sorted(_CONFIG_CLASSES))})")
    return _CONFIG_CLASSES[peft_type]


def config_dataclass(cls):
    """Make ``cls`` a dataclass whose constructor rejects unknown fields with a ``ConfigError``."""
    cls = dataclasses.dataclass(cls)
    generated_init = cls.__init__

    @functools.wraps(generated_init)
    def __init__(self, *args, **kwargs):
        cls._reject_unknown(kwargs)
        generated_init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@config_dataclass
class PeftConfig:
    """Fields every method shares (names as in peft)."""

    peft_type: ClassVar[str] = ""
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    inference_mode: bool = False
    modules_to_save: list[str] | None = None

    # Fields peft's config for this method lacks: left out of saved files while at their defaults.
    omit_at_default: ClassVar[tuple[str, ...]] = ()
    # Names users often write for a field, for the hint in the unknown-field error.
    field_aliases: ClassVar[dict[str, str]] = {}
    # Unknown fields written by peft and their defaults there, for forgiving reads (see module docstring).
    foreign_defaults: ClassVar[dict[str, Any]] = {}

    @property
    def is_prompt_learning(self) -> bool:
        """Whether the method adds virtual tokens instead of changing modules (peft's property)."""
        return False

    @property
    def trained_biases(self) -> str:
        """Which base-model biases train and are saved with the adapter: ``"none"``, ``"all"``, or ``"adapted"``
        (those of the modules the adapter wraps). Read from peft's ``bias`` field where a method has one
        (``"lora_only"``, ``"boft_only"`` … mean ``"adapted"``)."""
        bias = getattr(self, "bias", "none")
        return "adapted" if bias.endswith("_only") else bias

    def __post_init__(self) -> None:
        if isinstance(self.task_type, enum.Enum):  # peft's TaskType members are plain strings in files
            self.task_type = self.task_type.value
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        check_field_types(self)
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field with an unusable value."""

    def resolved(self, model) -> PeftConfig:
        """A copy with the defaults that depend on ``model`` filled in; ``self`` stays as written."""
        return copy.deepcopy(self)

    def reshape_model(self, model) -> Callable[[], None] | None:
        """Change ``model``'s structure before the adapter's targets are planned (LoRA's ``layer_replication``);
        returns what puts it back should the adapter fail to go in (None: nothing changed). Nothing by default."""
        return None

    def companions(self, model) -> list[PeftConfig]:
        """Other methods' adapters this one brings along on ``model`` (LoRA's ``trainable_token_indices``: trainable
        token rows of the embedding); they are planned, injected, saved, merged, disabled and removed with it, under
        its name, each layer taking its own config. None by default."""
        return []

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _reject_unknown(cls, values: dict[str, Any]) -> None:
        known = cls.field_names()
        for name in values:
            if name not in known:
                hint = cls.field_aliases.get(name) or next(iter(difflib.get_close_matches(name, known, n=1)), None)
                suggestion = f" (did you mean '{hint}'?)" if hint else ""
                raise ConfigError(
                    f"unknown field '{name}' for {cls.__name__}{suggestion}; known fields: {', '.join(known)}"
                )

    def to_dict(self) -> dict[str, Any]:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        values = {k: v for k, v in dataclasses.asdict(self).items()
                  if not (k in self.omit_at_default and v == defaults[k])}
        return {"peft_type": self.peft_type, **values}

    def to_file_dict(self) -> dict[str, Any]:
        """What ``adapter_config.json`` holds: the fields, and the peft version whose format the file follows (peft
        reads it to tell files made before a format change, e.g. OFT's in 0.18)."""
        return {**self.to_dict(), "peft_version": peft_version}

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write ``adapter_config.json`` into ``save_directory`` (peft's method)."""
        write_json(Path(save_directory) / CONFIG_NAME, self.to_file_dict())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                        **kwargs) -> PeftConfig:
        """The config saved in an adapter folder (read forgivingly, see the module docstring), as the class of its
        ``peft_type`` when called on ``PeftConfig``; ``kwargs`` set fields on top, as in peft."""
        folder = Path(pretrained_model_name_or_path) / subfolder if subfolder else Path(pretrained_model_name_or_path)
        raw = read_adapter_config(folder)
        config_cls = cls if cls.peft_type else config_class_for_peft_type(raw["peft_type"])
        config = config_cls.from_saved(raw, source=str(folder / CONFIG_NAME))
        return config_cls.from_dict({**config.to_dict(), **kwargs}) if kwargs else config

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PeftConfig:
        """Strict: every key must be a field of ``cls`` (``peft_type`` may be given and must match)."""
        values = dict(values)
        peft_type = values.pop("peft_type", cls.peft_type)
        if peft_type != cls.peft_type:
            raise ConfigError(f"peft_type is '{peft_type}', but {cls.__name__} is '{cls.peft_type}'")
        return cls(**values)

    @classmethod
    def from_saved(cls, values: dict[str, Any], source: str = "adapter_config.json") -> PeftConfig:
        """Forgiving read of a saved config (see module docstring)."""
        values = {k: v for k, v in values.items() if k not in _METADATA_FIELDS}
        known = set(cls.field_names()) | {"peft_type"}
        peft_defaults = {**_peft_defaults(cls.peft_type), **cls.foreign_defaults}
        unknown = []
        for name in [k for k in values if k not in known]:
            value = values.pop(name)
            if name not in peft_defaults:
                unknown.append(name)
            elif value != peft_defaults[name] and value != cls.foreign_defaults.get(name, _NO_DEFAULT):
                raise ConfigError(
                    f"{source}: field '{name}' = {value!r} changes the computation and peftkit does not "
                    f"support it"
                )
        if unknown:
            warnings.warn(f"{source}: ignoring field(s) neither peftkit nor peft {peft_version} knows: "
                          f"{', '.join(sorted(unknown))}", stacklevel=2)
        return cls.from_dict(values)


_NO_DEFAULT = object()


@functools.cache
def _peft_defaults(peft_type: str) -> dict[str, Any]:
    """Each field's default in peft's config for ``peft_type``, as peft writes it to a file (empty if peft has no
    such type)."""
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if config_cls is None:
        return {}
    defaults = {}
    for item in dataclasses.fields(config_cls):
        if item.default is not dataclasses.MISSING:
            value = item.default
        elif item.default_factory is not dataclasses.MISSING:
            value = item.default_factory()
        else:
            continue
        defaults[item.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return defaults


def _is_neutral(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (dict, list, str)) and len(value) == 0)


@config_dataclass
class TargetedConfig(PeftConfig):
    """A config whose method wraps chosen modules of the model.

    ``target_modules``: a list matches exact module names or name suffixes (``"query"`` matches
    ``bert.encoder.layer.0.attention.self.query``); a string is a regular expression that must match
    the whole name; ``"all-linear"`` hits every Linear / Conv1D except the output head.
    ``exclude_modules`` takes the same forms. ``layers_to_transform`` keeps only modules in the listed
    layer indices, the index being the number after ``layers_pattern`` (or the first number in the name).
    """

    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None

    # model_type -> target_modules used when a config leaves them unset
    default_targets: ClassVar[dict[str, list[str]]] = {}
    # On a model type the table does not name: the projections of these roles (core/module_roles.py), found from
    # the module structure. Query and value by default, peft's most common choice; () for none.
    default_roles: ClassVar[tuple[str, ...]] = ("query", "value")
    # Modules adapted besides the matched targets — an output layer tied to a target's weight, a module holding a
    # targeted parameter — set on the copy ``resolved`` returns; never saved (peft finds them the same way)
    also_adapted: ClassVar[tuple[str, ...]] = ()

    def default_target_modules(self, model_type: str | None) -> list[str] | str | None:
        """What ``target_modules`` means when unset, for this model type (None: no default)."""
        targets = self.default_targets.get(model_type)
        return list(targets) if targets is not None else None

    def resolved(self, model) -> TargetedConfig:
        config = super().resolved(model)
        if config.target_modules is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            config.target_modules = self.default_target_modules(model_type)
            if config.target_modules is None:
                config.target_modules = self.structure_targets(model) or None
            if config.target_modules is None:
                raise ConfigError(
                    f"target_modules is not set and peftkit has no default for model type '{model_type}' (nor "
                    f"found its {' / '.join(self.default_roles) or 'target'} modules); set target_modules "
                    f"(e.g. 'all-linear')"
                )
        return config

    def structure_targets(self, model) -> list[str]:
        """The default targets on a model type no table names, found from the module structure: the projections
        of ``default_roles``."""
        return role_targets(model, self.default_roles) if self.default_roles else []

    def validate(self) -> None:
        super().validate()
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (set, tuple)):
                setattr(self, name, sorted(value))
            elif value is not None and not isinstance(value, (str, list)):
                raise ConfigError(f"{name} must be a list of module names or a regex string, got {value!r}")
            elif isinstance(value, str) and value != "all-linear":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ConfigError(f"{name} {value!r} is not a valid regular expression: {exc}") from None
        layers = self.layers_to_transform
        if layers is not None:
            indices = [layers] if isinstance(layers, int) else layers
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
                raise ConfigError(f"layers_to_transform must hold non-negative layer indices, got {layers!r}")


@contextlib.contextmanager
def reshaped(model, config: PeftConfig) -> Iterator[None]:
    """``model`` reshaped as ``config`` asks (``PeftConfig.reshape_model``) for what follows, put back if that
    fails."""
    undo = config.reshape_model(model)
    try:
        yield
    except BaseException:
        if undo is not None:
            undo()
        raise
