"""peftkit: parameter-efficient fine-tuning of pretrained language models."""

from peftkit import methods  # noqa: F401  (registers the built-in methods)
from peftkit.core.composition import Average, BatchSplit, Fuse, Parallel, Scale, Stack
from peftkit.core.config import PeftConfig
from peftkit.core.errors import CheckpointError, ConfigError, DataError, PeftkitError
from peft import PeftType, PromptTuningInit, TaskType  # peft's enums of names (plain strings in files)

from peftkit.core.adapter_files import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
from peftkit.core.auto import (
    AutoPeftModel,
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
)
from peftkit.core.peft_helpers import (
    cast_mixed_precision_params,
    get_peft_config,
    inject_adapter_in_model,
    prepare_model_for_kbit_training,
)
from peftkit.core.peft_model import PeftModel, get_peft_model
from peftkit.core.peft_surface import get_layer_status, get_model_status
from peftkit.core.task_models import (
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)
from peftkit.core.quantization import quantize_nf4, quiet_torchao_import_logs
from peftkit.core.registry import Method, register_method, registered_methods
from peftkit.core.targets import plan
from peftkit.methods.adalora import AdaLoraAllocator, AdaLoraConfig
from peftkit.methods.apet import ApetConfig
from peftkit.methods.bitfit import BitFitConfig
from peftkit.methods.bottleneck import BottleneckConfig
from peftkit.methods.ia3 import IA3Config
from peftkit.methods.increlora import IncreLoraAllocator, IncreLoraConfig
from peftkit.methods.lite_adapter import LiteAdapterConfig
from peftkit.methods.ln_tuning import LNTuningConfig
from peftkit.methods.lora import LoraConfig
from peftkit.methods.meft import MeftConfig
from peftkit.methods.prefix_tuning import PrefixTuningConfig
from peftkit.methods.prompt_tuning import PromptEncoderConfig, PromptTuningConfig
from peftkit.methods.vl_pet import VlPetConfig

quiet_torchao_import_logs()

__version__ = "0.1.0"

__all__ = [
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "PeftType",
    "PromptTuningInit",
    "TaskType",
    "cast_mixed_precision_params",
    "get_peft_config",
    "inject_adapter_in_model",
    "prepare_model_for_kbit_training",
    "AdaLoraAllocator",
    "AdaLoraConfig",
    "ApetConfig",
    "Average",
    "BatchSplit",
    "Fuse",
    "Parallel",
    "Scale",
    "Stack",
    "BitFitConfig",
    "BottleneckConfig",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "IA3Config",
    "IncreLoraAllocator",
    "IncreLoraConfig",
    "LiteAdapterConfig",
    "LNTuningConfig",
    "LoraConfig",
    "MeftConfig",
    "VlPetConfig",
    "Method",
    "PeftConfig",
    "PeftModel",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftkitError",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptTuningConfig",
    "get_layer_status",
    "get_model_status",
    "get_peft_model",
    "get_peft_model_state_dict",
    "load_peft_weights",
    "set_peft_model_state_dict",
    "plan",
    "quantize_nf4",
    "register_method",
    "registered_methods",
]
