"""peft's helper functions around a model: configs from dicts, adapters injected without a wrapper, precision
set-ups for quantised and mixed-precision training. Same names, arguments and effects as peft's."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peftkit.core.config import PeftConfig, config_class_for_peft_type
from peftkit.core.errors import ConfigError
from peftkit.core.peft_model import PeftModel


def get_peft_config(config_dict: dict[str, Any]) -> PeftConfig:
    """The config a dict describes, as the class of its ``peft_type`` (strict: every key must be a field)."""
    if "peft_type" not in config_dict:
        raise ConfigError("get_peft_config needs a 'peft_type' in the dict (e.g. 'LORA')")
    return config_class_for_peft_type(config_dict["peft_type"]).from_dict(config_dict)


def inject_adapter_in_model(peft_config: PeftConfig, model: nn.Module, adapter_name: str = "default",
                            low_cpu_mem_usage: bool = False, state_dict: dict | None = None) -> nn.Module:
    """Put the adapter's layers into ``model`` in place and return it, with no ``PeftModel`` around it (peft's
    low-level API): only the adapter trains, and the model's forward runs through it."""
    del low_cpu_mem_usage
    if state_dict is not None:
        raise ConfigError("inject_adapter_in_model(state_dict=...): peftkit finds the modules from the config's "
                          "target_modules, not from a state dict")
    if peft_config.is_prompt_learning:
        raise ConfigError(f"{type(peft_config).__name__} adds virtual tokens through the wrapper's forward; use "
                          f"get_peft_model for prompt learning")
    PeftModel(model, peft_config, adapter_name=adapter_name, lean_training=False)
    return model


def _is_plain(parameter: torch.Tensor) -> bool:
    """Not a quantised tensor subclass (torchao's NF4Tensor): its dtype can be changed by a cast."""
    return type(parameter.data) is torch.Tensor


def prepare_model_for_kbit_training(model: nn.Module, use_gradient_checkpointing: bool = True,
                                    gradient_checkpointing_kwargs: dict | None = None,
                                    auto_clear_cache: bool = True) -> nn.Module:
    """peft's preparation of a (quantised) model for adapter training: every parameter frozen, float16 / bfloat16
    ones that are not quantised cast to float32 (norms, embeddings, head); for a quantised model, gradient
    checkpointing on, with input gradients for the reentrant form."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in model.parameters():
        if parameter.dtype in (torch.float16, torch.bfloat16) and _is_plain(parameter):
            parameter.data = parameter.data.float()
    if auto_clear_cache and torch.cuda.is_available():
        torch.cuda.empty_cache()
    quantised = any(not _is_plain(p) for p in model.parameters()) or getattr(model, "is_loaded_in_4bit", False) \
        or getattr(model, "is_loaded_in_8bit", False)
    if quantised and use_gradient_checkpointing:
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant", True) and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def cast_mixed_precision_params(model: nn.Module, dtype: torch.dtype) -> None:
    """peft's set-up for training under autocast: frozen parameters in ``dtype``, trainable ones in float32."""
    for parameter in model.parameters():
        if not _is_plain(parameter):
            continue
        parameter.data = parameter.data.to(dtype if not parameter.requires_grad else torch.float32)
