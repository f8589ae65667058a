"""peft's task classes: ``get_peft_model`` and ``from_pretrained`` return one when the config names a ``task_type``.

Each is ``PeftModel`` with the forward signature peft gives that task, so code that reads or calls it by
keyword works unchanged. Arguments left at None are not passed on, so the wrapped model's own defaults apply.
"""

from __future__ import annotations

import dataclasses

import torch

from peftkit.core.config import PeftConfig
from peftkit.core.peft_model import PeftModel


def _given(task_ids: torch.Tensor | None, named: dict, kwargs: dict) -> dict:
    """The keyword arguments to pass on: the named ones that were given, then the rest (``task_ids`` among them)."""
    if task_ids is not None:
        named["task_ids"] = task_ids
    return {**{key: value for key, value in named.items() if value is not None}, **kwargs}


def _labelled_forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                      output_attentions=None, output_hidden_states=None, return_dict=None, task_ids=None, **kwargs):
    """peft's forward for causal LM, sequence and token classification."""
    named = dict(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels,
                 output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                 return_dict=return_dict)
    return PeftModel.forward(self, **_given(task_ids, named, kwargs))


class PeftModelForCausalLM(PeftModel, task_type="CAUSAL_LM"):
    forward = _labelled_forward


class _HeadTraining(PeftModel):
    """Classification: every adapter trains its own copy of the new head, whatever its config says (as in peft)."""

    def add_adapter(self, adapter_name: str, peft_config: PeftConfig, low_cpu_mem_usage: bool = False,
                    autocast_adapter_dtype: bool | None = None) -> None:
        if peft_config.task_type is None:
            peft_config = dataclasses.replace(peft_config, task_type=self._task_type)
        super().add_adapter(adapter_name, peft_config, low_cpu_mem_usage, autocast_adapter_dtype)


class PeftModelForSequenceClassification(_HeadTraining, task_type="SEQ_CLS"):
    forward = _labelled_forward


class PeftModelForTokenClassification(_HeadTraining, task_type="TOKEN_CLS"):
    forward = _labelled_forward


class PeftModelForSeq2SeqLM(PeftModel, task_type="SEQ_2_SEQ_LM"):
    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, decoder_input_ids=None,
                decoder_attention_mask=None, decoder_inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, task_ids=None, **kwargs):
        named = dict(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                     decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                     decoder_inputs_embeds=decoder_inputs_embeds, labels=labels,
                     output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                     return_dict=return_dict)
        return super().forward(**_given(task_ids, named, kwargs))


class PeftModelForQuestionAnswering(PeftModel, task_type="QUESTION_ANS"):
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, task_ids=None, **kwargs):
        named = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                     position_ids=position_ids, inputs_embeds=inputs_embeds, start_positions=start_positions,
                     end_positions=end_positions, output_attentions=output_attentions,
                     output_hidden_states=output_hidden_states, return_dict=return_dict)
        return super().forward(**_given(task_ids, named, kwargs))


class PeftModelForFeatureExtraction(PeftModel, task_type="FEATURE_EXTRACTION"):
    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, task_ids=None, **kwargs):
        named = dict(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                     output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                     return_dict=return_dict)
        return super().forward(**_given(task_ids, named, kwargs))
