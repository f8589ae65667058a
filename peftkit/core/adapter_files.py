"""Saving and loading adapters in peft's format, as a part of ``PeftModel`` (mixed into it), and peft's
functions over adapter state (``get_peft_model_state_dict``, ``set_peft_model_state_dict``, ``load_peft_weights``).

Keys are peft's file keys (``base_model.model.<module>.<tensor>``, the adapter name left out). Every read is
checked against what the model expects before anything changes, so a missing, corrupt or mismatched file
leaves the model as it was. peft's keyword arguments are accepted where peftkit does the same thing, and
refused with a one-line reason where it has no such feature.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from peftkit.core.checkpoint import (
    COMPOSITION_NAME,
    CONFIG_NAME,
    FUSION_NAME,
    KEY_PREFIX,
    PROMPT_KEY_PREFIX,
    adapter_folder,
    check_tensors,
    read_adapter_config,
    read_adapter_weights,
    read_json,
    read_tensors,
    write_adapter,
    write_json,
    write_tensors,
)
from peftkit.core.composition import LearnedComposition, composition_from_dict
from peftkit.core.config import PeftConfig, reshaped
from peftkit.core.errors import CheckpointError, ConfigError
from peftkit.core.mechanics.sharding import whole
from peftkit.core.modules_to_save import ModulesToSave
from peftkit.core.prompt import SAVED_KEY
from peftkit.core.registry import method_by_peft_type
from peftkit.core.shared import SHARED_KEY_PREFIX
from peftkit.core.targets import Plan, inside_adapter_container, plan
from peftkit.core.targets import base_of as _base_of


def module_key(path: str) -> str:
    """A module's name in peft's keys: nested adapter layers (``q.base_layer``) stand for their module (``q``)."""
    while path.endswith(".base_layer"):
        path = path[: -len(".base_layer")]
    return path


def parameter_key(name: str) -> str:
    """A base parameter's name in peft's keys: one ``base_layer`` however many adapter layers are nested."""
    return re.sub(r"(\.base_layer)+", ".base_layer", name)


def reject_extra_arguments(function: str, kwargs: dict) -> None:
    if kwargs:
        raise ConfigError(f"{function}() got argument(s) peftkit does not support: {', '.join(sorted(kwargs))}")


def saved_config(folder: str | os.PathLike) -> PeftConfig:
    """The config saved in an adapter folder, as the class of its ``peft_type``."""
    raw = read_adapter_config(folder)
    return method_by_peft_type(raw["peft_type"]).config_cls.from_saved(raw, source=str(Path(folder) / CONFIG_NAME))


def remap_keys(tensors: dict[str, torch.Tensor], key_mapping: dict[str, str] | None) -> dict[str, torch.Tensor]:
    """peft's ``key_mapping``: each key (after its ``base_model[.model].`` prefix) is renamed by the first regex
    that matches it."""
    if not key_mapping:
        return tensors
    renamed = {}
    for key, tensor in tensors.items():
        prefix = KEY_PREFIX if key.startswith(KEY_PREFIX) else PROMPT_KEY_PREFIX if key.startswith(
            PROMPT_KEY_PREFIX) else ""
        rest = key[len(prefix):]
        for pattern, replacement in key_mapping.items():
            rest, count = re.subn(pattern, replacement, rest)
            if count:
                break
        renamed[prefix + rest] = tensor
    return renamed


def read_mapped_weights(folder: str | os.PathLike, key_mapping: dict[str, str] | None = None):
    tensors, path = read_adapter_weights(folder)
    return remap_keys(tensors, key_mapping), path


def load_peft_weights(model_id: str | os.PathLike, device: str | None = None,
                      key_mapping: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of an adapter folder, under peft's file keys (peft's function)."""
    tensors, _ = read_mapped_weights(model_id, key_mapping)
    return {key: tensor.to(device) for key, tensor in tensors.items()} if device is not None else tensors


def get_peft_model_state_dict(model, state_dict: dict[str, torch.Tensor] | None = None, adapter_name: str = "default",
                              unwrap_compiled: bool = False, save_embedding_layers: str | bool = "auto"):
    """What ``save_pretrained`` writes for ``adapter_name``: its tensors under peft's file keys."""
    if unwrap_compiled:
        model = getattr(model, "_orig_mod", model)
    return model._tensors_to_save(adapter_name, state_dict, save_embedding_layers)


def set_peft_model_state_dict(model, peft_model_state_dict: dict[str, torch.Tensor], adapter_name: str = "default",
                              ignore_mismatched_sizes: bool = False, low_cpu_mem_usage: bool = False):
    """Copy tensors keyed as in peft's files into the loaded adapter ``adapter_name``; every key and shape is checked
    first (a mismatch changes nothing). Returns peft's result: no missing and no unexpected keys."""
    if ignore_mismatched_sizes:
        raise ConfigError("set_peft_model_state_dict(ignore_mismatched_sizes=True): peftkit loads only tensors of "
                          "the shapes the adapter has")
    del low_cpu_mem_usage
    model._copy_into(adapter_name, peft_model_state_dict, "the state dict")
    return _IncompatibleKeys(missing_keys=[], unexpected_keys=[])


class AdapterFiles:
    """``PeftModel``'s saving and loading, and the adapter tensors by peft's file keys."""

    def _bias_parameters(self, adapter_name: str) -> dict[str, nn.Parameter]:
        """Base-model biases trained with this adapter (``PeftConfig.trained_biases``)."""
        biases = self.peft_config[adapter_name].trained_biases
        if biases == "none":
            return {}
        if biases == "adapted":
            return {
                f"{module_key(path)}.base_layer.bias": layer.bias
                for path, layer in self.adapter_layers()
                if layer.has_adapter(adapter_name) and not isinstance(layer, ModulesToSave) and layer.bias is not None
            }
        return {parameter_key(name): p for name, p in self._visible_base_parameters() if name.endswith(".bias")}

    def _visible_base_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Base parameters, without adapter tensors or modules_to_save copies and originals."""
        hidden = [path + "." for path, layer in self.adapter_layers() if isinstance(layer, ModulesToSave)]
        for name, parameter in self.get_base_model().named_parameters():
            hidden_name = any(name.startswith(h) for h in hidden)
            if not hidden_name and not inside_adapter_container(self.get_base_model(), name):
                yield name, parameter

    def _key_prefix(self, adapter_name: str) -> str:
        """peft's prefix for module tensors: prompt-learning adapters sit one level higher."""
        return PROMPT_KEY_PREFIX if adapter_name in self.prompt_encoder else KEY_PREFIX

    def _adapter_tensors(self, adapter_name: str, saving: bool = False) -> dict[str, torch.Tensor]:
        """The adapter's live tensors under their peft file keys (``saving``: in the form files hold)."""
        prefix = self._key_prefix(adapter_name)
        tensors = {}
        if adapter_name in self.prompt_encoder:
            tensors.update(self.prompt_encoder[adapter_name].saved_tensors())
        for path, layer in self.adapter_layers():
            if layer.has_adapter(adapter_name):
                state = layer.saved_state_dict(adapter_name) if saving else layer.adapter_state_dict(adapter_name)
                for key, tensor in state.items():
                    tensors[f"{prefix}{module_key(path)}.{key}"] = tensor
        for key, tensor in self._bias_parameters(adapter_name).items():
            tensors[prefix + key] = tensor
        if adapter_name in self.shared_tensors:
            for key, tensor in self.shared_tensors[adapter_name].state_dict(keep_vars=True).items():
                tensors[SHARED_KEY_PREFIX + key] = tensor
        return tensors

    def _trainable_tensors(self, adapter_name: str) -> list[torch.Tensor]:
        """The leaf parameters that train with the adapter (a prompt encoder's, not its output)."""
        frozen = {id(t) for _, layer in self.adapter_layers() for t in layer.frozen_tensors(adapter_name)}
        if adapter_name in self.shared_tensors:
            frozen.update(id(t) for t in self.shared_tensors[adapter_name].buffers())
        tensors = [t for key, t in self._adapter_tensors(adapter_name).items()
                   if key != SAVED_KEY and id(t) not in frozen]
        if adapter_name in self.prompt_encoder:
            tensors += list(self.prompt_encoder[adapter_name].parameters())
        return tensors

    def _expected_tensors(self, the_plan: Plan, config: PeftConfig) -> tuple[dict[str, tuple], dict[str, tuple]]:
        """Keys and shapes a checkpoint for ``the_plan`` must hold, and may hold, worked out before any change.

        Optional: full input / output embedding weights, which peft saves next to an adapter that targets an
        embedding (or after the vocabulary was resized); they are loaded into the base model, as peft does.
        """
        prompt = any(item.role == "prompt" for item in the_plan.modules)
        prefix = PROMPT_KEY_PREFIX if prompt else KEY_PREFIX
        required = {
            (key if item.role == "prompt" else f"{prefix}{item.name}.{key}"): shape
            for item in the_plan.modules for key, shape in item.shapes.items()
        }
        required.update({SHARED_KEY_PREFIX + key: shape for key, shape in the_plan.shared_shapes.items()})
        biases = config.trained_biases
        adapted = {item.name for item in the_plan.modules if item.role == "adapt"}
        saved = [item.name + "." for item in the_plan.modules if item.role == "save"]
        base = self.get_base_model()
        embeddings = ([base.get_input_embeddings(), base.get_output_embeddings()]
                      if hasattr(base, "get_input_embeddings") else [])
        optional = {}
        for name, parameter in self._visible_base_parameters():
            if any(name.startswith(s) for s in saved):
                continue
            owner_module = base.get_submodule(name.rpartition(".")[0]) if "." in name else base
            owner, _, leaf = parameter_key(name).rpartition(".")
            owner = module_key(owner)
            key = prefix + (f"{owner}.base_layer.{leaf}" if owner in adapted else parameter_key(name))
            if leaf == "bias" and (biases == "all" or (biases == "adapted" and owner in adapted)):
                required[key] = tuple(parameter.shape)
            elif any(_base_of(owner_module) is e for e in embeddings if e is not None):
                optional[key] = tuple(parameter.shape)
        return required, optional

    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True,
                        selected_adapters: list[str] | None = None, save_embedding_layers: str | bool = "auto",
                        is_main_process: bool = True, path_initial_model_for_weight_conversion: str | None = None,
                        state_dict: dict[str, torch.Tensor] | None = None, **kwargs) -> None:
        """Write each adapter in peft's format (``default`` at the root, others in sub-folders).

        With a composition active (and all adapters saved), also ``peftkit_composition.json`` naming it and,
        for ``Fuse`` / ``Scale``, their layers and ``modules_to_save`` in ``peftkit_fusion.safetensors`` (a
        tensor shared by every module, ScaLearn++'s ω, is written once per module).
        A model sharded with FSDP: every process calls this (sharded tensors are gathered), and only the
        one with ``is_main_process`` writes, as in peft. ``state_dict`` (by the model's state-dict names, as
        transformers' Trainer passes it) supplies the tensors instead of the live ones.
        ``save_embedding_layers``: also write the full input / output embedding weights — always (True), never
        (False), or when the adapter changes an embedding module ("auto"), as peft.
        """
        if not safe_serialization:
            raise ConfigError("save_pretrained(safe_serialization=False): peftkit writes safetensors only, never a "
                              "pickle")
        if path_initial_model_for_weight_conversion is not None:
            raise ConfigError("save_pretrained(path_initial_model_for_weight_conversion=...): peftkit does not convert "
                              "a PiSSA / OLoRA adapter into a plain LoRA one when saving")
        reject_extra_arguments("save_pretrained", kwargs)
        for name in selected_adapters or list(self.peft_config):
            config = self._require(name).to_file_dict()
            config["inference_mode"] = True
            tensors = self._tensors_to_save(name, state_dict, save_embedding_layers)
            tensors = {key: whole(tensor) for key, tensor in tensors.items()}
            if is_main_process:
                write_adapter(adapter_folder(save_directory, name), config, tensors)
        composition = self.active_composition
        if composition is None or selected_adapters is not None:
            return
        if isinstance(composition, LearnedComposition):
            tensors = {key: whole(tensor).detach().clone() for key, tensor in self._fusion_tensors(composition).items()}
            if is_main_process:
                write_tensors(Path(save_directory) / FUSION_NAME, tensors)
        if not is_main_process:
            return
        write_json(Path(save_directory) / COMPOSITION_NAME,
                   {"composition": composition.to_dict(), "train": self.trained_in_composition})

    def _tensors_to_save(self, adapter_name: str, state_dict: dict[str, torch.Tensor] | None = None,
                         save_embedding_layers: str | bool = "auto") -> dict[str, torch.Tensor]:
        """The adapter's tensors under peft's file keys, taken from ``state_dict`` where it has them."""
        if save_embedding_layers not in (True, False, "auto"):
            raise ConfigError(f"save_embedding_layers must be True, False or 'auto', got {save_embedding_layers!r}")
        self._require(adapter_name)
        tensors = self._adapter_tensors(adapter_name, saving=True)
        embeddings = self._embedding_tensors(self._key_prefix(adapter_name))
        if save_embedding_layers is True or (save_embedding_layers == "auto" and self._changes_embedding(adapter_name)):
            tensors.update(embeddings)
        if state_dict is not None:
            names = {id(tensor): name for name, tensor in self.state_dict(keep_vars=True).items()}
            tensors = {key: state_dict.get(names.get(id(tensor)), tensor) for key, tensor in tensors.items()}
        return {key: tensor.detach() for key, tensor in tensors.items()}

    def _embeddings(self) -> list[nn.Module]:
        model = self.get_base_model()
        if not hasattr(model, "get_input_embeddings"):
            return []
        return [e for e in (model.get_input_embeddings(), model.get_output_embeddings()) if e is not None]

    def _changes_embedding(self, adapter_name: str) -> bool:
        embeddings = self._embeddings()
        return any(layer.has_adapter(adapter_name) and any(layer.base is e for e in embeddings)
                   for _, layer in self.adapter_layers())

    def _embedding_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The full input / output embedding weights under peft's keys."""
        model, embeddings = self.get_base_model(), self._embeddings()
        tensors = {}
        for name, parameter in self._visible_base_parameters():
            owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            if any(_base_of(owner) is e for e in embeddings):
                tensors[prefix + parameter_key(name)] = parameter
        return tensors

    def _fusion_tensors(self, fuse: LearnedComposition) -> dict[str, torch.Tensor]:
        layers = {f"{path}.fusion.{key}": tensor for path, layer in self.adapter_layers() if fuse.key in layer.fusion
                  for key, tensor in layer.fusion[fuse.key].state_dict().items()}
        return {**layers, **self._composition_modules(fuse)}

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str | Path, adapter_name: str = "default",
                        is_trainable: bool = False, config: PeftConfig | None = None,
                        autocast_adapter_dtype: bool | None = None, ephemeral_gpu_offload: bool = False,
                        low_cpu_mem_usage: bool = False, key_mapping: dict[str, str] | None = None,
                        lean_training: bool = True, subfolder: str | None = None, **kwargs):
        """Load an adapter folder written by peftkit or peft onto ``model``; the wrapper is the class of the
        adapter's ``task_type`` (``PeftModelForCausalLM`` …), as in peft.

        A folder saved with a composition active loads all its adapters and activates the composition.
        ``config`` replaces the saved config; ``key_mapping`` (regex → replacement) renames saved keys first.
        """
        reject_extra_arguments("from_pretrained", kwargs)
        folder = Path(model_id) / subfolder if subfolder else Path(model_id)
        if (folder / COMPOSITION_NAME).is_file():
            peft_model = cls(model, lean_training=lean_training)
            peft_model._load_composition(folder, is_trainable)
            return peft_model
        config = config if config is not None else saved_config(folder)
        peft_model = cls.for_task(config.task_type)(model, lean_training=lean_training)
        peft_model.load_adapter(folder, adapter_name, is_trainable=is_trainable, config=config,
                                autocast_adapter_dtype=autocast_adapter_dtype,
                                ephemeral_gpu_offload=ephemeral_gpu_offload, key_mapping=key_mapping)
        return peft_model

    def _load_composition(self, folder: Path, is_trainable: bool) -> None:
        saved = read_json(folder / COMPOSITION_NAME, "composition file")
        composition = composition_from_dict(saved.get("composition", {}))
        for name in composition.names:
            self.load_adapter(adapter_folder(folder, name), adapter_name=name, is_trainable=is_trainable)
        self.set_adapter(composition, train=saved.get("train"))
        if isinstance(composition, LearnedComposition):
            tensors = read_tensors(folder / FUSION_NAME)
            live = self._fusion_tensors(composition)
            check_tensors(folder / FUSION_NAME, tensors, {k: tuple(v.shape) for k, v in live.items()}, {})
            with torch.no_grad():
                for key, tensor in tensors.items():
                    live[key].copy_(tensor)
        if not is_trainable:
            self.requires_grad_(False)

    def load_adapter(self, model_id: str | Path, adapter_name: str = "default", is_trainable: bool = False,
                     torch_device: str | None = None, autocast_adapter_dtype: bool | None = None,
                     ephemeral_gpu_offload: bool = False, low_cpu_mem_usage: bool = False,
                     key_mapping: dict[str, str] | None = None, config: PeftConfig | None = None,
                     subfolder: str | None = None, **kwargs) -> None:
        """Read, check, then inject: a missing, corrupt or mismatched file leaves the model unchanged.

        An adapter of that name already loaded takes the saved weights in place (as peft does, and as
        transformers' Trainer relies on to resume from a checkpoint). The weights go where the model is, so
        ``torch_device`` and ``low_cpu_mem_usage`` change nothing.
        """
        del torch_device, low_cpu_mem_usage
        if ephemeral_gpu_offload:
            raise ConfigError("load_adapter(ephemeral_gpu_offload=True): peftkit does not offload models to the CPU")
        reject_extra_arguments("load_adapter", kwargs)
        folder = Path(model_id) / subfolder if subfolder else Path(model_id)
        if adapter_name in self.peft_config:
            self.hotswap_adapter(folder, adapter_name, key_mapping=key_mapping)
            return
        self._check_new_name(adapter_name)
        config = copy.deepcopy(config) if config is not None else saved_config(folder)
        config.inference_mode = not is_trainable
        tensors, path = read_mapped_weights(folder, key_mapping)
        with reshaped(self.get_base_model(), config):
            the_plan = plan(self.get_base_model(), config)
            required, optional = self._expected_tensors(the_plan, config)
            check_tensors(path, tensors, required, optional)
            self._inject(adapter_name, the_plan)
        if adapter_name in self.prompt_encoder:
            self.prompt_encoder[adapter_name].load_saved(tensors)
            self._mark_trainable()
        live = {**self._adapter_tensors(adapter_name), **self._base_tensors_by_key(self._key_prefix(adapter_name))}
        with torch.no_grad():
            for key, tensor in tensors.items():
                if key != SAVED_KEY:
                    live[key].copy_(tensor.to(live[key].dtype))
        if autocast_adapter_dtype:
            self._upcast_adapter(adapter_name)

    def hotswap_adapter(self, model_id: str | Path, adapter_name: str = "default",
                        key_mapping: dict[str, str] | None = None) -> None:
        """Put the weights saved in ``model_id`` into the loaded adapter ``adapter_name`` in place: no module is
        created or replaced, so references to the model (and compiled graphs) stay valid. The saved adapter must
        be the same method with tensors of the same keys and shapes; settings that change no shape (LoRA's alpha)
        may differ, and each layer takes them (``AdapterLayer.reconfigure``). A
        mismatch is an error that changes nothing."""
        current = self._require(adapter_name)
        if any(adapter_name in layer.merged_adapters for _, layer in self.adapter_layers()):
            raise ConfigError(f"adapter '{adapter_name}' is merged; unmerge it before hot-swapping its weights")
        raw = read_adapter_config(model_id)
        if raw["peft_type"] != current.peft_type:
            raise CheckpointError(f"{model_id}: a {raw['peft_type']} adapter; '{adapter_name}' is {current.peft_type}")
        config = type(current).from_saved(raw, source=str(Path(model_id) / CONFIG_NAME))
        tensors, path = read_mapped_weights(model_id, key_mapping)
        self._copy_into(adapter_name, tensors, path)
        for path_name, layer in self.adapter_layers():
            if layer.has_adapter(adapter_name):
                layer.reconfigure(adapter_name, config, module_key(path_name))
        config.target_modules, config.inference_mode = current.target_modules, current.inference_mode
        self.peft_config[adapter_name] = config

    def _copy_into(self, adapter_name: str, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
        """Copy a full set of saved tensors into the loaded adapter, after checking every key and shape."""
        live = self._adapter_tensors(adapter_name)
        prompt = self.prompt_encoder[adapter_name] if adapter_name in self.prompt_encoder else None
        check_tensors(Path(source), tensors, {key: tuple(t.shape) for key, t in live.items()}, {})
        with torch.no_grad():
            for key, tensor in tensors.items():
                if key != SAVED_KEY:
                    live[key].copy_(tensor.to(live[key].dtype))
        if prompt is not None:  # the saved tokens replace the encoder, as when loading
            prompt.load_saved(tensors)
            self._mark_trainable()

    def load_prompt(self, model_id: str | Path, adapter_name: str = "default") -> None:
        """Start the prompt-learning adapter ``adapter_name`` from the virtual tokens saved in ``model_id``
        (prompt transfer: a source task's trained prompt initialises the target's); the rest of that folder
        (a head, other tensors) is not used."""
        self._require(adapter_name)
        if adapter_name not in self.prompt_encoder:
            raise ConfigError(f"adapter '{adapter_name}' is not a prompt-learning adapter")
        tensors, path = read_adapter_weights(model_id)
        prompt = self.prompt_encoder[adapter_name]
        wanted = tuple(prompt.virtual_tokens().shape)
        if SAVED_KEY not in tensors or tuple(tensors[SAVED_KEY].shape) != wanted:
            found = tuple(tensors[SAVED_KEY].shape) if SAVED_KEY in tensors else "none"
            raise CheckpointError(f"{path}: needs '{SAVED_KEY}' of shape {wanted} to start the prompt from, "
                                  f"found {found}")
        prompt.load_saved(tensors)
        self._mark_trainable()

    def _base_tensors_by_key(self, prefix: str) -> dict[str, torch.Tensor]:
        return {prefix + parameter_key(name): p for name, p in self._visible_base_parameters()}
