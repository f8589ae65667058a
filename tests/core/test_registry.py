"""A new method needs one ``register_method`` call: plan, PeftModel, save/load and merge then work."""

import pytest
import torch
from torch import nn

from peftkit import ConfigError, Method, PeftModel, get_peft_model, plan, register_method
from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.layer import AdapterLayer
from peftkit.core.registry import method_by_name
from tests.conftest import logits, randomize_trainable, tiny_model


@config_dataclass
class RowScaleConfig(TargetedConfig):
    peft_type = "TEST_ROW_SCALE"
    init_scale: float = 1.0


class RowScale(AdapterLayer):
    """h = (1 + v) ⊙ (W x) + b, a learned per-output rescaling (a test method, like (IA)³ on outputs)."""

    adapter_attributes = ("row_scale",)

    def __init__(self, base_layer):
        super().__init__(base_layer)
        self.row_scale = nn.ParameterDict()

    @classmethod
    def expected_shapes(cls, base_layer, config, module_name):
        return {"row_scale": (base_layer.out_features,)}

    def add_adapter(self, name, config, module_name):
        self.row_scale[name] = nn.Parameter(torch.full((self.base.out_features,), config.init_scale - 1))

    def delta_weight(self, name):
        return self.row_scale[name][:, None] * self.weight

    def apply_adapters(self, names, x):
        out = nn.functional.linear(x, self.weight)
        for name in self.own(names):
            out = out * (1 + self.row_scale[name])
        bias = self.bias
        return out if bias is None else out + bias


@pytest.fixture
def row_scale_method():
    """The toy method, registered for one test (conftest's ``isolated_registry`` removes it afterwards)."""
    return register_method(Method(name="test_row_scale", config_cls=RowScaleConfig, layers={nn.Linear: RowScale}))


def test_a_method_registered_with_one_call_plans_trains_saves_loads_and_merges(row_scale_method, tmp_path):
    assert method_by_name("test_row_scale").config_cls is RowScaleConfig
    config = RowScaleConfig(target_modules=["o_proj"])
    assert plan(tiny_model("llama"), config).new_parameters == 2 * 32
    model = get_peft_model(tiny_model("llama"), config)
    assert torch.allclose(logits(model), logits(tiny_model("llama")), atol=1e-6)
    randomize_trainable(model)
    expected = logits(model)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path)
    assert torch.allclose(logits(loaded), expected, atol=1e-6)
    merged = loaded.merge_and_unload()
    assert torch.allclose(logits(merged), expected, atol=1e-5)


def test_unknown_method_name_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown method 'lroa'.*lora"):
        method_by_name("lroa")


def test_a_method_registered_in_one_test_is_gone_in_the_next():
    with pytest.raises(ConfigError, match="unknown method 'test_row_scale'"):
        method_by_name("test_row_scale")
