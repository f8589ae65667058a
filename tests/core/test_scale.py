"""ScaLearn (the ``Scale`` composition): the formula, the four variants' parameter counts, training, files."""

from __future__ import annotations

import pytest
import torch

import peftkit
from peftkit import BottleneckConfig, Fuse, Scale
from tests.conftest import logits, randomize_trainable, tiny_batch, tiny_model, without_dropout

NAMES = ("sst2", "trec", "rte")
VARIANTS = {"ScaLearn": {}, "ScaLearnUniform": {"uniform": True}, "ScaLearn++": {"shared": True},
            "ScaLearnUniform++": {"uniform": True, "shared": True}}


def sources(kind: str = "bert") -> peftkit.PeftModel:
    """Three trained-looking bottleneck adapters on the feed-forward blocks (2 layers, width 32)."""
    model = peftkit.get_peft_model(without_dropout(tiny_model(kind)), BottleneckConfig(reduction_factor=4),
                                   adapter_name=NAMES[0])
    for name in NAMES[1:]:
        model.add_adapter(name, BottleneckConfig(reduction_factor=4))
    for index, name in enumerate(NAMES):
        model.set_adapter(name)
        randomize_trainable(model, seed=index)
    return model


def alone(model, name: str) -> torch.Tensor:
    model.set_adapter(name)
    return logits(model)


def set_weights(model, composition: Scale, values: torch.Tensor) -> None:
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            if composition.key in layer.fusion:
                layer.fusion[composition.key].weights.copy_(values.expand_as(layer.fusion[composition.key].weights))


def test_one_hot_weights_give_each_adapter_alone_and_ones_give_the_sum_of_changes():
    model = sources()
    with model.disable_adapter():
        base = logits(model)
    singles = {name: alone(model, name) for name in NAMES}
    composition = Scale(*NAMES, dropout=0.0)
    model.set_adapter(composition)
    for index, name in enumerate(NAMES):
        set_weights(model, composition, torch.nn.functional.one_hot(torch.tensor([index]), 3).float().T)
        assert (logits(model) - singles[name]).abs().max() <= 1e-5
    # the changes add up inside each block: compare at one block's output directly
    layer = next(layer for _, layer in model.adapter_layers() if composition.key in layer.fusion)
    x = torch.randn(2, 5, 48)
    h = layer.base(x)
    changes = [layer.apply_adapters([name], x) - h for name in NAMES]
    set_weights(model, composition, torch.tensor([[0.5], [-1.0], [2.0]]))
    expected = h + 0.5 * changes[0] - 1.0 * changes[1] + 2.0 * changes[2]
    assert (layer(x) - expected).abs().max() <= 1e-5
    assert (base - singles[NAMES[0]]).abs().max() > 1e-3  # the adapters do act


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_parameter_counts_training_and_round_trip(variant, tmp_path):
    model = sources()
    composition = Scale(*NAMES, **VARIANTS[variant])
    model.set_adapter(composition)
    assert composition.variant == variant
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    layers, n, width = 2, 3, 32
    expected = {"ScaLearn": layers * n * width, "ScaLearnUniform": layers * n, "ScaLearn++": n * width,
                "ScaLearnUniform++": n}[variant]
    assert sum(p.numel() for p in trainable.values()) == expected
    weights = torch.cat([p.detach().flatten() for p in trainable.values()])
    assert abs(weights.mean().item() - 2 / 3) < 1e-3 and weights.std().item() < 0.002  # N(2/N, 0.001)

    batch = {**tiny_batch(4), "labels": torch.tensor([0, 1, 2, 1])}
    optimizer = torch.optim.AdamW(trainable.values(), lr=0.05)
    model.train()
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # only ω trains (the head stays random): a small but real fall
    assert (torch.cat([p.detach().flatten() for p in trainable.values()]) - weights).abs().max() > 0.01
    model.eval()
    expected_logits = logits(model)
    model.save_pretrained(tmp_path)
    loaded = peftkit.PeftModel.from_pretrained(without_dropout(tiny_model("bert")), tmp_path)
    assert loaded.active_composition == composition
    assert (logits(loaded) - expected_logits).abs().max() <= 1e-6


def test_fuse_has_far_more_transfer_parameters_than_scalearn():
    model = sources()
    model.set_adapter(Fuse(*NAMES))
    fuse = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert fuse == 2 * 3 * (32 * 32 + 32)
    model.set_adapter(Scale(*NAMES))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) * 10 < fuse


def test_scale_settings_are_checked():
    with pytest.raises(peftkit.ConfigError, match="dropout must be in"):
        Scale("a", "b", dropout=1.5)


def test_a_module_holding_only_some_adapters_uses_their_rows_of_omega():
    model = sources()
    model.add_adapter("partial", BottleneckConfig(reduction_factor=4, target_modules=["layer.0.output.dense"]))
    model.set_adapter("partial")
    randomize_trainable(model, seed=7)
    names = (*NAMES, "partial")
    composition = Scale(*names, dropout=0.0)
    model.set_adapter(composition)
    layers = {path: layer for path, layer in model.adapter_layers()}
    full, half = layers["bert.encoder.layer.0.output.dense"], layers["bert.encoder.layer.1.output.dense"]
    assert composition.present(half) == list(NAMES)
    omega = torch.tensor([[0.5], [-1.0], [2.0], [3.0]])
    set_weights(model, composition, omega)
    x = torch.randn(2, 5, 48)
    for layer, rows in ((full, [0, 1, 2, 3]), (half, [0, 1, 2])):
        h = layer.base(x)
        expected = h + sum(omega[row, 0] * (layer.apply_adapters([names[row]], x) - h) for row in rows)
        assert (layer(x) - expected).abs().max() <= 1e-5


def test_one_adapter_alone_is_scaled_too():
    model = sources()
    model.add_adapter("partial", BottleneckConfig(reduction_factor=4, target_modules=["layer.0.output.dense"]))
    randomize_trainable(model, seed=7)
    composition = Scale("sst2", "partial", dropout=0.0)
    model.set_adapter(composition)
    layer = dict(model.adapter_layers())["bert.encoder.layer.1.output.dense"]  # holds sst2 only
    set_weights(model, composition, torch.tensor([[0.25], [4.0]]))
    x = torch.randn(2, 5, 48)
    h = layer.base(x)
    assert (layer(x) - (h + 0.25 * (layer.apply_adapters(["sst2"], x) - h))).abs().max() <= 1e-5


@pytest.mark.parametrize("composition", [Scale(*NAMES, modules_to_save=["classifier"]),
                                         Fuse(*NAMES, modules_to_save=["classifier"])])
def test_modules_to_save_train_with_the_composition_and_load_back(composition, tmp_path):
    model = sources()
    model.set_adapter(composition)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= trainable
    assert all(".fusion." in n or ".classifier." in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    head_before = model.base_model.classifier.weight.detach().clone()
    batch = {**tiny_batch(4), "labels": torch.tensor([0, 1, 2, 1])}
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert (model.base_model.classifier.weight - head_before).abs().max() > 0.01
    model.eval()
    expected = logits(model)
    model.save_pretrained(tmp_path)
    fresh = tiny_model("bert")
    with torch.no_grad():
        fresh.classifier.weight.normal_()  # a different head: loading must replace it
    loaded = peftkit.PeftModel.from_pretrained(without_dropout(fresh), tmp_path)
    assert loaded.active_composition == composition
    assert (logits(loaded) - expected).abs().max() <= 1e-6


def test_modules_to_save_that_match_nothing_are_an_error_and_change_nothing():
    model = sources()
    model.set_adapter("sst2")
    with pytest.raises(peftkit.ConfigError, match="modules_to_save names 'head'"):
        model.set_adapter(Scale(*NAMES, modules_to_save=["head"]))
    assert model.active_adapter == "sst2" and all(not layer.fusion for _, layer in model.adapter_layers())
