"""peftkit: parameter-efficient fine-tuning of pretrained language models.

Importing peftkit is light: each name below loads its module (and torch, transformers, peft) on first use, so
that the command line answers ``--help`` and ``--version`` at once. The first such use also registers the
built-in methods and peft's task classes.
"""

from __future__ import annotations

import importlib

from peftkit.core.logs import quiet_library_logs

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it from here (dynamic)

# public name -> the module that defines it
_EXPORTS = {
    "AdaLoraAllocator": "peftkit.methods.adalora",
    "AdaLoraConfig": "peftkit.methods.adalora",
    "ApetConfig": "peftkit.methods.apet",
    "AutoPeftModel": "peftkit.core.auto",
    "AutoPeftModelForCausalLM": "peftkit.core.auto",
    "AutoPeftModelForFeatureExtraction": "peftkit.core.auto",
    "AutoPeftModelForQuestionAnswering": "peftkit.core.auto",
    "AutoPeftModelForSeq2SeqLM": "peftkit.core.auto",
    "AutoPeftModelForSequenceClassification": "peftkit.core.auto",
    "AutoPeftModelForTokenClassification": "peftkit.core.auto",
    "Average": "peftkit.core.composition",
    "BatchSplit": "peftkit.core.composition",
    "BitFitConfig": "peftkit.methods.bitfit",
    "BottleneckConfig": "peftkit.methods.bottleneck",
    "cast_mixed_precision_params": "peftkit.core.peft_helpers",
    "CheckpointError": "peftkit.core.errors",
    "ConfigError": "peftkit.core.errors",
    "CordaConfig": "peftkit.methods.lora.corda",
    "DataError": "peftkit.core.errors",
    "EncoderPackingCollator": "peftkit.core.mechanics.packing",
    "EvaConfig": "peftkit.methods.lora.eva",
    "Fuse": "peftkit.core.composition",
    "get_eva_state_dict": "peftkit.methods.lora.eva",
    "get_layer_status": "peftkit.core.peft_surface",
    "get_model_status": "peftkit.core.peft_surface",
    "get_peft_config": "peftkit.core.peft_helpers",
    "get_peft_model": "peftkit.core.peft_model",
    "get_peft_model_state_dict": "peftkit.core.adapter_files",
    "IA3Config": "peftkit.methods.ia3",
    "IncreLoraAllocator": "peftkit.methods.increlora",
    "IncreLoraConfig": "peftkit.methods.increlora",
    "initialize_lora_eva_weights": "peftkit.methods.lora.eva",
    "inject_adapter_in_model": "peftkit.core.peft_helpers",
    "LiteAdapterConfig": "peftkit.methods.lite_adapter",
    "LNTuningConfig": "peftkit.methods.ln_tuning",
    "load_peft_weights": "peftkit.core.adapter_files",
    "LoftQConfig": "peftkit.methods.lora.loftq",
    "LoraConfig": "peftkit.methods.lora",
    "MeftConfig": "peftkit.methods.meft",
    "Method": "peftkit.core.registry",
    "MissingExtraError": "peftkit.core.errors",
    "packed_loss": "peftkit.core.mechanics.packing",
    "PackingCollator": "peftkit.core.mechanics.packing",
    "Parallel": "peftkit.core.composition",
    "PeftConfig": "peftkit.core.config",
    "PeftkitError": "peftkit.core.errors",
    "PeftModel": "peftkit.core.peft_model",
    "PeftModelForCausalLM": "peftkit.core.task_models",
    "PeftModelForFeatureExtraction": "peftkit.core.task_models",
    "PeftModelForQuestionAnswering": "peftkit.core.task_models",
    "PeftModelForSeq2SeqLM": "peftkit.core.task_models",
    "PeftModelForSequenceClassification": "peftkit.core.task_models",
    "PeftModelForTokenClassification": "peftkit.core.task_models",
    "PeftType": "peft",
    "plan": "peftkit.core.targets",
    "PrefixTuningConfig": "peftkit.methods.prefix_tuning",
    "prepare_model_for_kbit_training": "peftkit.core.peft_helpers",
    "preprocess_corda": "peftkit.methods.lora.corda",
    "PromptEncoderConfig": "peftkit.methods.p_tuning",
    "PromptTuningConfig": "peftkit.methods.prompt_tuning",
    "PromptTuningInit": "peft",
    "quantize_nf4": "peftkit.core.mechanics.quantization",
    "register_method": "peftkit.core.registry",
    "registered_methods": "peftkit.core.registry",
    "Scale": "peftkit.core.composition",
    "set_peft_model_state_dict": "peftkit.core.adapter_files",
    "Stack": "peftkit.core.composition",
    "TaskType": "peft",
    "VlPetConfig": "peftkit.methods.vl_pet",
}

__all__ = sorted(_EXPORTS)

quiet_library_logs()


def __getattr__(name: str):
    """A name from ``_EXPORTS``, or the config class of any registered method (``LoHaConfig``, as peft names it)."""
    if name.startswith("__"):
        raise AttributeError(name)
    load_builtins()
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        from peftkit.core.registry import registered_methods

        configs = {method.config_cls.__name__: method.config_cls for method in registered_methods().values()}
        if name not in configs:
            raise AttributeError(f"module 'peftkit' has no attribute '{name}'")
        value = configs[name]
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def load_builtins() -> None:
    """Register the built-in methods and peft's task classes (idempotent)."""
    importlib.import_module("peftkit.methods")
    importlib.import_module("peftkit.core.task_models")
