"""``TunerModel``: the level between ``PeftModel`` and the adapted model, as peft's ``LoraModel`` & co.

peft nests the model one level down (``peft_model.base_model.model`` is the ``LlamaForCausalLM``), so its
parameter and state-dict names read ``base_model.model.model.layers.0…``. Holding the model the same way
makes those names, optimizer groups and state dicts written for peft work unchanged. Prompt-learning
adapters skip this level in peft (``peft_model.base_model`` is the model itself), and so does peftkit.
"""

from __future__ import annotations

from torch import nn


class TunerModel(nn.Module):
    """Holds the adapted model as ``.model``; calls and unknown attributes go to it."""

    def __init__(self, model: nn.Module, peft_config: dict) -> None:
        super().__init__()
        self.model = model
        self.peft_config = peft_config  # the owning PeftModel's adapters, by name (the same dict, as in peft)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)
