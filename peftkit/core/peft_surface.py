"""What makes a peftkit model read, to code and to tools, as a peft model.

transformers' ``Trainer``, TRL's trainers and accelerate recognise an adapter model by
``isinstance(model, peft.PeftModel)``: only then do they read the model's inputs from the wrapped model,
save just the adapter, and resume from it. ``RecognisedAsPeft`` is that class, and peftkit's ``PeftModel``
derives from it; peft's ``__init__`` never runs, and every public method and property of peft's class is
defined again by peftkit (``PeftModelSurface`` below and ``core/peft_model.py``; a test checks it).

``PeftModelSurface`` holds the views peft's users read: the active adapters, the layer and model status,
the prompt, the dtype, and peft's helpers for gradient checkpointing and model cards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel as RecognisedAsPeft
from peft.peft_model import TunerLayerStatus, TunerModelStatus

from peftkit.core.errors import ConfigError

__all__ = ["PeftModelSurface", "RecognisedAsPeft", "get_layer_status", "get_model_status"]

IRREGULAR = "irregular"


class PeftModelSurface:
    """peft's read-side API over ``PeftModel``'s own state (mixed into ``PeftModel``)."""

    @property
    def active_adapters(self) -> list[str]:
        """The adapters in use (the one active adapter, or every adapter of the active composition)."""
        return self.active_names()

    @property
    def active_peft_config(self):
        if self.active_adapter is None:
            raise ConfigError("a composition is active, so there is no single active config; read peft_config[name]")
        return self.peft_config[self.active_adapter]

    @property
    def has_active_enabled_adapter(self) -> bool:
        return bool(self.active_names()) and not self.prompts_disabled

    @property
    def modules_to_save(self) -> set[str] | None:
        """The module names trained whole by any adapter (peft's property)."""
        names = {name for config in self.peft_config.values() for name in (config.modules_to_save or [])}
        return names or None

    @property
    def base_model_torch_dtype(self) -> torch.dtype | None:
        return getattr(self.get_base_model(), "dtype", None)

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """Make the named adapters trainable, or freeze them, without changing which are active."""
        for name in [adapter_names] if isinstance(adapter_names, str) else adapter_names:
            self._require(name)
            for tensor in self._trainable_tensors(name):
                tensor.requires_grad_(requires_grad)

    def get_prompt(self, batch_size: int, task_ids: torch.Tensor | None = None, max_cache_len: int | None = None):
        """The active prompt-learning adapter's input: (batch, virtual tokens, width) soft prompts, or for prefix
        tuning the transformers cache holding the prefix keys and values."""
        del max_cache_len  # the prefix cache grows as generation needs
        prompt = self._active_prompt()
        if prompt is None:
            raise ConfigError("get_prompt needs an active prompt-learning adapter")
        if task_ids is not None and not prompt.takes_task_ids:
            raise ConfigError("task_ids pick each row's task of a multitask adapter; the active adapter takes none")
        if hasattr(prompt, "cache"):
            return prompt.cache(batch_size, self.base_model_torch_dtype)
        return prompt.batch_prompts(batch_size, task_ids)

    def get_prompt_embedding_to_save(self, adapter_name: str) -> torch.Tensor:
        self._require(adapter_name)
        if adapter_name not in self.prompt_encoder:
            raise ConfigError(f"adapter '{adapter_name}' is not a prompt-learning adapter")
        return self.prompt_encoder[adapter_name].virtual_tokens().detach()

    def prepare_inputs_for_generation(self, *args, task_ids: torch.Tensor | None = None, **kwargs):
        if task_ids is not None:
            raise ConfigError("task_ids go to forward or generate, which hand them to the adapter; not here")
        return self.get_base_model().prepare_inputs_for_generation(*args, **kwargs)

    def prepare_model_for_gradient_checkpointing(self, model: torch.nn.Module) -> torch.nn.Module:
        """Make the input embeddings' output require grad, so that reentrant checkpointing of a frozen model
        still reaches the adapters (as peft)."""
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        return model

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """peft's LoRA conversion of other adapter types: peftkit has none."""
        return False

    def get_layer_status(self) -> list[TunerLayerStatus]:
        return get_layer_status(self)

    def get_model_status(self) -> TunerModelStatus:
        return get_model_status(self)

    def create_or_update_model_card(self, output_dir: str | Path) -> None:
        """A ``README.md`` model card that names the library (peft's format), the base model and the methods."""
        path = Path(output_dir) / "README.md"
        card = ModelCard.load(path) if path.exists() else ModelCard.from_template(ModelCardData())
        card.data["library_name"] = "peft"
        card.data["tags"] = sorted(set(card.data.get("tags") or []) | {"peftkit"} |
                                   {str(c.peft_type).lower() for c in self.peft_config.values()})
        base = next((c.base_model_name_or_path for c in self.peft_config.values() if c.base_model_name_or_path), None)
        if base is not None:
            card.data["base_model"] = base
        card.save(path)


def _merged_status(values: list) -> object:
    """One value if every layer agrees, else ``"irregular"`` (peft's convention)."""
    distinct = {repr(v) for v in values}
    return values[0] if len(distinct) == 1 else IRREGULAR


def _quantization(layer) -> str | None:
    weight = getattr(layer.base, "weight", None)
    return "torchao-nf4" if weight is not None and type(weight).__name__ == "NF4Tensor" else None


def get_layer_status(model) -> list[TunerLayerStatus]:
    """For each adapter layer: its adapters, which are active and merged, whether each trains, its devices."""
    statuses = []
    for path, layer in model.adapter_layers():
        requires_grad, devices = {}, {}
        for name in layer.adapter_names:
            tensors = list(layer.adapter_state_dict(name).values())
            frozen = {id(t) for t in layer.frozen_tensors(name)}  # saved, never trained: not a sign of either
            flags = {bool(t.requires_grad) for t in tensors if id(t) not in frozen} or {False}
            requires_grad[name] = flags.pop() if len(flags) == 1 else IRREGULAR
            devices[name] = sorted({t.device.type for t in tensors})
        statuses.append(TunerLayerStatus(
            name=path, module_type=f"{type(layer).__module__.rsplit('.', 1)[-1]}.{type(layer).__name__}",
            enabled=not layer.adapters_disabled, active_adapters=list(layer.active_adapters),
            merged_adapters=list(layer.merged_adapters), requires_grad=requires_grad,
            available_adapters=sorted(layer.adapter_names), devices=devices,
            quantization_backend=_quantization(layer)))
    return statuses


def get_model_status(model) -> TunerModelStatus:
    """The layer status summed over the model; a field on which layers disagree reads ``"irregular"``."""
    layers = get_layer_status(model)
    trainable, total = model.get_nb_trainable_parameters()
    requires_grad, devices = {}, {}
    for status in layers:
        for name, flag in status.requires_grad.items():
            requires_grad[name] = flag if requires_grad.get(name, flag) == flag else IRREGULAR
        for name, kinds in status.devices.items():
            devices[name] = sorted(set(devices.get(name, [])) | set(kinds))
    return TunerModelStatus(
        base_model_type=type(model.get_base_model()).__name__, adapter_model_type=type(model.base_model).__name__,
        peft_types={name: str(config.peft_type) for name, config in model.peft_config.items()},
        trainable_params=trainable, total_params=total, num_adapter_layers=len(layers),
        enabled=_merged_status([s.enabled for s in layers]) if layers else not model.prompts_disabled,
        active_adapters=_merged_status([sorted(s.active_adapters) for s in layers]) if layers else model.active_names(),
        merged_adapters=_merged_status([sorted(s.merged_adapters) for s in layers]) if layers else [],
        requires_grad=requires_grad, available_adapters=sorted(model.peft_config), devices=devices,
        quantization_backend=_merged_status([s.quantization_backend for s in layers]) if layers else None)
