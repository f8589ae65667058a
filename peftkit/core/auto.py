"""peft's ``AutoPeftModel`` classes: one call loads the base model an adapter names, then the adapter.

``AutoPeftModelForCausalLM.from_pretrained(adapter_folder)`` reads ``base_model_name_or_path`` from the adapter's
config, loads that model with the matching transformers ``AutoModelFor…`` class (extra keyword arguments, such as
``dtype``, go to it) and puts the adapter on it. A tokenizer saved beside the adapter with more tokens than the
model's embedding has resizes the embedding first, as in peft. Base models load from local folders only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from peftkit.core.config import PeftConfig
from peftkit.core.errors import ConfigError
from peftkit.core.peft_model import PeftModel
from peftkit.core.pretrained import resolve_model_dir

TASK_AUTO_CLASSES = {"CAUSAL_LM": AutoModelForCausalLM, "SEQ_2_SEQ_LM": AutoModelForSeq2SeqLM,
                     "SEQ_CLS": AutoModelForSequenceClassification, "TOKEN_CLS": AutoModelForTokenClassification,
                     "QUESTION_ANS": AutoModelForQuestionAnswering, "FEATURE_EXTRACTION": AutoModel}


class AutoPeftModel:
    """Loads the adapter's base model with the class its ``task_type`` calls for (``AutoModel`` without one)."""

    task_type: ClassVar[str | None] = None

    def __init__(self, *args, **kwargs) -> None:
        raise TypeError(f"{type(self).__name__} is made by {type(self).__name__}.from_pretrained(adapter_folder)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, adapter_name: str = "default",
                        is_trainable: bool = False, config: PeftConfig | None = None, revision: str | None = None,
                        **kwargs) -> PeftModel:
        folder = Path(pretrained_model_name_or_path)
        config = config if config is not None else PeftConfig.from_pretrained(folder)
        if cls.task_type is not None and config.task_type not in (None, cls.task_type):
            raise ConfigError(f"{folder}: the adapter's task_type is {config.task_type}, but {cls.__name__} loads "
                              f"{cls.task_type} models; use AutoPeftModel or the matching class")
        if config.base_model_name_or_path is None:
            raise ConfigError(f"{folder}: the adapter config has no base_model_name_or_path; load the base model "
                              f"yourself and call PeftModel.from_pretrained(model, folder)")
        auto_class = TASK_AUTO_CLASSES.get(cls.task_type or config.task_type, AutoModel)
        base_dir = resolve_model_dir(config.base_model_name_or_path)
        del revision  # a local folder has no revisions
        model = auto_class.from_pretrained(base_dir, **kwargs)
        _resize_to_saved_tokenizer(model, folder)
        return PeftModel.from_pretrained(model, folder, adapter_name=adapter_name, is_trainable=is_trainable,
                                         config=config)


def _resize_to_saved_tokenizer(model, folder: Path) -> None:
    if not (folder / "tokenizer_config.json").is_file():
        return
    tokens = len(AutoTokenizer.from_pretrained(folder))
    if tokens > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(tokens)


class AutoPeftModelForCausalLM(AutoPeftModel):
    task_type = "CAUSAL_LM"


class AutoPeftModelForSeq2SeqLM(AutoPeftModel):
    task_type = "SEQ_2_SEQ_LM"


class AutoPeftModelForSequenceClassification(AutoPeftModel):
    task_type = "SEQ_CLS"


class AutoPeftModelForTokenClassification(AutoPeftModel):
    task_type = "TOKEN_CLS"


class AutoPeftModelForQuestionAnswering(AutoPeftModel):
    task_type = "QUESTION_ANS"


class AutoPeftModelForFeatureExtraction(AutoPeftModel):
    task_type = "FEATURE_EXTRACTION"
