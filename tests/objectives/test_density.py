"""DEFT's density loss: the formula by hand, padding left out, gradients (also under lean training), and
training that makes feed-forward activations sparser."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import peftkit
from peftkit import ConfigError, LoraConfig
from peftkit.objectives.density import DensityLoss, ExampleDensity, activation_density, feed_forward_activations
from tests.conftest import VOCAB, tiny_batch, tiny_lora, tiny_model, train_losses, without_dropout


def hand_density(activation: torch.Tensor, mask: torch.Tensor, epsilon: float) -> torch.Tensor:
    per_example = []
    for b in range(activation.shape[0]):
        tokens = activation[b][mask[b].bool()]
        per_example.append((tokens**2 / (tokens**2 + epsilon)).mean())
    return torch.stack(per_example)


def test_example_density_is_the_formula_and_its_gradient():
    a = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True) * 0.3
    a.retain_grad()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    got = ExampleDensity.apply(a, mask, 0.01)
    assert torch.allclose(got, hand_density(a, mask, 0.01), atol=1e-12)
    leaf = a.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ExampleDensity.apply(t, mask, 0.01), (leaf,))


def test_the_loss_averages_layers_and_examples_without_padding():
    model = peftkit.get_peft_model(without_dropout(tiny_model("bert")), LoraConfig(r=4, target_modules="all-linear"))
    model.train()
    batch = tiny_batch(batch=3, length=10)  # example 0 has two padding tokens
    objective = DensityLoss(model, weight=0.5, epsilon=1e-3)
    assert list(objective.activations) == [f"base_model.model.bert.encoder.layer.{i}.intermediate.intermediate_act_fn"
                                           for i in range(2)]
    seen = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
               for m in objective.activations.values()]
    model(**batch)
    for handle in handles:
        handle.remove()
    expected = 0.5 * torch.stack([hand_density(a.double(), batch["attention_mask"], 1e-3) for a in seen]).mean()
    loss = objective.loss()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert objective.loss().item() == 0.0  # consumed
    model.eval()
    model(**batch)
    assert objective.loss().item() == 0.0  # nothing added outside training
    objective.remove()


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_density_gradients_are_the_same_with_and_without_lean_training(kind):
    grads = {}
    for lean in (False, True):
        model = tiny_lora(kind, lean_training=lean)
        objective = DensityLoss(model, epsilon=1e-2)
        model(**tiny_batch(batch=2, length=12))
        objective.loss().backward()
        grads[lean] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        objective.remove()
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 0
    for name, grad in grads[False].items():
        assert (grads[True][name] - grad).norm() <= 1e-5 * grad.norm() + 1e-9, name
    assert any(g.abs().sum() > 0 for g in grads[True].values())


def relu_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64, num_labels=3, hidden_act="relu")
    return BertForSequenceClassification(config).eval()


def test_training_with_the_density_loss_at_the_papers_defaults_zeroes_relu_activations():
    """Task loss + DEFT (w = 1, ε = 1e-7) against the task loss alone, same seed: exact-zero density falls."""
    batch = {**tiny_batch(batch=8, length=16), "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    density, task_loss = {}, {}
    for weight in (0.0, 1.0):
        model = peftkit.get_peft_model(relu_bert(), LoraConfig(r=8, target_modules="all-linear", task_type="SEQ_CLS"))
        objective = DensityLoss(model, weight=weight)
        torch.manual_seed(0)
        train_losses(model, batch, steps=40, lr=1e-2, extra_loss=objective.loss)
        per_layer = activation_density(model, [inputs])
        density[weight] = sum(per_layer.values()) / len(per_layer)
        model.eval()
        with torch.no_grad():
            task_loss[weight] = model(**batch).loss.item()
    assert density[0.0] > 0.3 and density[1.0] < 0.1 * density[0.0]
    assert task_loss[1.0] < 0.1  # the task is still learnt


def test_bad_settings_name_the_problem():
    model = tiny_model("bert")
    with pytest.raises(ConfigError, match="no feed-forward activation module found matching"):
        feed_forward_activations(model, ["nothing_here"])
    with pytest.raises(ConfigError, match="weight must be a number >= 0"):
        DensityLoss(model, weight=-1)
    with pytest.raises(ConfigError, match="epsilon must be > 0"):
        DensityLoss(model, epsilon=0)


def test_on_a_mixture_of_experts_the_routed_experts_add_the_density_of_the_tokens_they_saw():
    model = peftkit.get_peft_model(tiny_model("deepseek"), LoraConfig(r=4, target_modules="all-linear"))
    model.train()
    objective = DensityLoss(model, epsilon=1e-3)
    assert any("experts.act_fn" in name for name in objective.activations)
    seen = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
               for m in objective.activations.values()]
    batch = tiny_batch(batch=2, length=12)
    model(**batch)
    for handle in handles:
        handle.remove()
    mask = batch["attention_mask"]
    expected = torch.stack([(a.double() ** 2 / (a.double() ** 2 + 1e-3)).mean() if a.dim() == 2  # an expert's tokens
                            else hand_density(a.double(), mask, 1e-3).mean() for a in seen]).mean()
    assert sum(a.dim() == 2 for a in seen) >= 1  # the routed experts' rows added a term
    loss = objective.loss()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
    density = activation_density(model, [batch])
    assert all(0.0 < value <= 1.0 for value in density.values())


def test_training_with_the_density_loss_cuts_squared_relu_density_on_a_mixture_of_experts():
    batch = {**tiny_batch(batch=4, length=16)}
    batch["labels"] = batch["input_ids"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    density = {}
    for weight in (0.0, 1.0):
        model = peftkit.get_peft_model(tiny_model("deepseek"), LoraConfig(r=8, target_modules="all-linear"))
        objective = DensityLoss(model, weight=weight)
        torch.manual_seed(0)
        train_losses(model, batch, steps=30, lr=1e-2, extra_loss=objective.loss)
        per_layer = activation_density(model, [inputs])
        density[weight] = sum(per_layer.values()) / len(per_layer)
    assert density[1.0] < 0.5 * density[0.0], density
