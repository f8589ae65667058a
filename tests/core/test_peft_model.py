import pytest
import torch

from peftkit import ConfigError, LoraConfig, PeftModel, get_peft_model
from peftkit.core.layer import AdapterLayer
from tests.conftest import ATTENTION_TARGETS, assert_changed, logits, randomize_trainable, tiny_batch, tiny_model


def adapted(kind: str, **settings) -> PeftModel:
    settings.setdefault("target_modules", ATTENTION_TARGETS[kind])
    model = get_peft_model(tiny_model(kind), LoraConfig(r=4, lora_alpha=8, **settings))
    randomize_trainable(model)
    return model


def test_only_the_active_adapter_is_trainable(kind):
    model = get_peft_model(tiny_model(kind), LoraConfig(r=4, target_modules=ATTENTION_TARGETS[kind]))
    model.add_adapter("other", LoraConfig(r=2, target_modules=ATTENTION_TARGETS[kind]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".default" in n and "lora_" in n for n in trainable)
    model.set_adapter("other")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".other" in n for n in trainable)


def test_set_switches_and_delete_removes_adapters(kind):
    base = logits(tiny_model(kind))
    model = adapted(kind)
    model.add_adapter("second", LoraConfig(r=2, target_modules=ATTENTION_TARGETS[kind]))
    model.set_adapter("second")
    randomize_trainable(model, seed=5)
    second = logits(model)
    model.set_adapter("default")
    first = logits(model)
    assert_changed(first, second)
    model.delete_adapter("default")
    assert model.active_adapter == "second"
    assert torch.allclose(logits(model), second, atol=1e-6)
    model.delete_adapter("second")
    assert not any(isinstance(m, AdapterLayer) for m in model.modules())
    assert torch.allclose(logits(model), base, atol=1e-6)


def test_unknown_or_duplicate_adapter_names_are_errors():
    model = adapted("bert")
    with pytest.raises(ConfigError, match="no adapter named 'nope'"):
        model.set_adapter("nope")
    with pytest.raises(ConfigError, match="already exists"):
        model.add_adapter("default", LoraConfig(target_modules=["query"]))


def test_disable_adapter_gives_the_base_model_also_when_merged(kind):
    base = logits(tiny_model(kind))
    model = adapted(kind)
    with_adapter = logits(model)
    with model.disable_adapter():
        assert torch.allclose(logits(model), base, atol=1e-6)
    assert torch.allclose(logits(model), with_adapter, atol=1e-6)
    model.merge_adapter()
    with model.disable_adapter():
        assert torch.allclose(logits(model), base, atol=1e-5)
    assert torch.allclose(logits(model), with_adapter, atol=1e-5)


def test_modules_to_save_trains_a_copy_and_leaves_the_original():
    model = get_peft_model(tiny_model("bert"), LoraConfig(target_modules=["query"], task_type="SEQ_CLS"))
    head = model.base_model.classifier
    assert head.modules_to_save["default"].weight.requires_grad
    assert not head.base_layer.weight.requires_grad
    original = head.base_layer.weight.clone()
    randomize_trainable(model)
    assert torch.equal(head.base_layer.weight, original)
    assert not torch.equal(head.modules_to_save["default"].weight, original)


def test_merge_and_unload_returns_a_plain_model_with_the_same_outputs(kind):
    model = adapted(kind, modules_to_save=None)
    expected = logits(model)
    plain = model.merge_and_unload()
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
    assert torch.allclose(logits(plain), expected, atol=1e-5)


def test_unload_returns_the_original_model():
    base = logits(tiny_model("llama"))
    model = adapted("llama")
    plain = model.unload()
    assert not any(isinstance(m, AdapterLayer) for m in plain.modules())
    assert torch.allclose(logits(plain), base, atol=1e-6)


def test_print_trainable_parameters(capsys):
    model = get_peft_model(tiny_model("bert"), LoraConfig(r=4, target_modules=["query"]))
    model.print_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    assert capsys.readouterr().out.strip() == (
        f"trainable params: 512 || all params: {total:,} || trainable%: {100 * 512 / total:.4f}")


def test_trains_in_a_plain_pytorch_loop_and_the_loss_falls():
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("bert"), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                          task_type="SEQ_CLS"))
    batch = tiny_batch(batch=16, length=8)
    labels = batch["input_ids"][:, 0] % 3  # learnable from the first token
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(40):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
