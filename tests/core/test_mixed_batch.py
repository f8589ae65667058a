"""Many adapters in one batch: each row through its own adapter, as if run alone."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit.core.errors import ConfigError
from peftkit.core.mixed_batch import row_groups
from tests.conftest import randomize_trainable, tiny_batch, tiny_model, without_dropout


def lora_model(kind: str = "llama", task_type: str | None = None):
    """Three LoRA adapters with different targets and ranks, non-zero B."""
    targets = {"llama": (["q_proj", "v_proj"], "all-linear", ["o_proj", "down_proj"]),
               "bert": (["query", "value"], "all-linear", ["output.dense"])}[kind]
    model = None
    for index, (name, target) in enumerate(zip(("a", "b", "c"), targets, strict=True)):
        config = peftkit.LoraConfig(r=2 + index, lora_alpha=4, target_modules=target, task_type=task_type)
        if model is None:
            model = peftkit.get_peft_model(without_dropout(tiny_model(kind)), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        model.set_adapter(name)
        randomize_trainable(model, seed=index + 5)
    model.set_adapter("a")
    return model.eval()


def one_by_one(model, batch: dict, names: list[str]) -> torch.Tensor:
    """Each row's logits with its adapter set (or all disabled for "__base__")."""
    rows = []
    for row, name in enumerate(names):
        single = {key: value[row:row + 1] for key, value in batch.items()}
        with torch.no_grad():
            if name == "__base__":
                with model.disable_adapter():
                    rows.append(model(**single).logits)
            else:
                model.set_adapter(name)
                rows.append(model(**single).logits)
    model.set_adapter("a")
    return torch.cat(rows)


@pytest.mark.parametrize("names", [["a", "b", "__base__", "c", "a", "b"], ["a", "a", "b", "b", "c", "c"]])
def test_each_row_gets_its_own_lora_adapter(names):
    model = lora_model()
    batch = {"input_ids": tiny_batch(6)["input_ids"]}
    with torch.no_grad():
        mixed = model(**batch, adapter_names=names).logits
    assert (mixed - one_by_one(model, batch, names)).abs().max() < 1e-5
    assert all(layer.active_adapters == ["a"] and layer.composition is None for _, layer in model.adapter_layers())


@pytest.mark.parametrize("form", ["gathered", "concatenated"])
def test_same_rank_adapters_take_the_stacked_forms(monkeypatch, form):
    """Equal ranks, unequal scalings, a base row: the rows' updates come from the stacked form (once per
    adapted layer) and equal each row run alone; the stacks are reused until a weight changes."""
    import peftkit.methods.lora.mixed as lora_mixed
    from peftkit.methods.lora import LoraLinear

    model = None
    for index, name in enumerate(("a", "b", "c", "d")):
        config = peftkit.LoraConfig(r=4, lora_alpha=4 * (index + 1), target_modules="all-linear")
        if model is None:
            model = peftkit.get_peft_model(without_dropout(tiny_model("llama")), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        model.set_adapter(name)
        randomize_trainable(model, seed=index + 11)
    model.set_adapter("a")
    model.eval()
    calls = []
    original = getattr(lora_mixed, f"add_{form}_update")
    monkeypatch.setattr(lora_mixed, f"add_{form}_update", lambda *args: calls.append(1) or original(*args))
    monkeypatch.setattr(lora_mixed, "FORM", form)
    names = ["d", "a", "__base__", "c", "b", "a", "d"]
    batch = {"input_ids": tiny_batch(7)["input_ids"]}
    with torch.no_grad():
        mixed = model(**batch, adapter_names=names).logits
    assert len(calls) == sum(1 for _, layer in model.adapter_layers() if isinstance(layer, LoraLinear))
    assert (mixed - one_by_one(model, batch, names)).abs().max() < 1e-5

    layer = next(layer for _, layer in model.adapter_layers() if isinstance(layer, LoraLinear))
    stacked = layer._stacked_weights[1]
    with torch.no_grad():
        model(**batch, adapter_names=names)
        assert layer._stacked_weights[1] is stacked  # the same groups and weights: not stacked again
        for _, adapted in model.adapter_layers():  # changed in place (as a hot swap does): stacked afresh
            if isinstance(adapted, LoraLinear):
                adapted.lora_B["c"].weight.mul_(3)
        changed = model(**batch, adapter_names=names).logits
    assert layer._stacked_weights[1] is not stacked
    assert (changed - mixed).abs().max() > 1e-3 and (changed - one_by_one(model, batch, names)).abs().max() < 1e-5
    with torch.inference_mode():  # an inference tensor keeps no count of in-place changes: never cached
        made_in_inference = torch.zeros(2)
    assert lora_mixed.version(made_in_inference) is None and lora_mixed.version(torch.zeros(2)) == 0


def test_rows_use_their_own_classification_head_and_other_methods():
    model = lora_model("bert", task_type="SEQ_CLS")
    model.add_adapter("ia", peftkit.IA3Config(target_modules=["key", "value", "output.dense"],
                                               feedforward_modules=["output.dense"], task_type="SEQ_CLS"))
    model.set_adapter("ia")
    randomize_trainable(model, seed=9)
    names = ["ia", "b", "a", "ia", "__base__"]
    batch = tiny_batch(5)
    with torch.no_grad():
        mixed = model(**batch, adapter_names=names).logits
    assert (mixed - one_by_one(model, batch, names)).abs().max() < 1e-5


def test_generate_with_one_adapter_per_row():
    model = lora_model()
    prompts = tiny_batch(3, length=5)["input_ids"]
    names = ["c", "__base__", "a"]
    mixed = model.generate(input_ids=prompts, adapter_names=names, max_new_tokens=6, do_sample=False,
                           pad_token_id=0)
    for row, name in enumerate(names):
        if name == "__base__":
            with model.disable_adapter():
                alone = model.generate(input_ids=prompts[row:row + 1], max_new_tokens=6, do_sample=False,
                                       pad_token_id=0)
        else:
            model.set_adapter(name)
            alone = model.generate(input_ids=prompts[row:row + 1], max_new_tokens=6, do_sample=False,
                                   pad_token_id=0)
        assert torch.equal(mixed[row], alone[0])


def test_groups_are_slices_when_contiguous():
    groups = row_groups(["a", "a", "b", "a"], torch.device("cpu"))
    assert groups[1] == ("b", slice(2, 3))
    assert groups[0][0] == "a" and groups[0][1].tolist() == [0, 1, 3]


def test_bad_adapter_names_are_one_line_errors():
    model = lora_model()
    batch = {"input_ids": tiny_batch(2)["input_ids"]}
    with pytest.raises(ConfigError, match="adapter_names has 3 entries, but the batch has 2 rows"):
        model(**batch, adapter_names=["a", "b", "c"])
    with pytest.raises(ConfigError, match="no adapter named 'd'"):
        model(**batch, adapter_names=["a", "d"])
    model.add_adapter("soft", peftkit.PromptTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"))
    with pytest.raises(ConfigError, match="'soft' is prompt learning"):
        model(**batch, adapter_names=["a", "soft"])
    model.merge_adapter()
    with pytest.raises(ConfigError, match="needs the adapters unmerged"):
        model(**batch, adapter_names=["a", "b"])
