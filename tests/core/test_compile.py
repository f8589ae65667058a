"""``torch.compile`` on a LoRA model with lean training on (the default): no graph breaks, and a compiled training
step gives the eager step's loss and gradients."""

import pytest
import torch
import torch._dynamo

import peftkit
from tests.conftest import randomize_trainable, tiny_batch, tiny_model, without_dropout

TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn", "c_fc"], "llama": "all-linear"}


def lora_model(kind: str, dropout: bool) -> peftkit.PeftModel:
    base = tiny_model(kind) if dropout else without_dropout(tiny_model(kind))
    if kind == "gpt2":  # transformers infers no loss type from GPT2LMHeadModel's name and logs a warning, which
        base.loss_type = "ForCausalLM"  # breaks the graph of the bare model too
    model = peftkit.get_peft_model(base, peftkit.LoraConfig(r=4, lora_dropout=0.1 if dropout else 0.0,
                                                            target_modules=TARGETS[kind]))
    randomize_trainable(model)
    return model.train()


def batch_with_labels(kind: str) -> dict:
    batch = tiny_batch()
    return {**batch, "labels": torch.tensor([0, 2]) if kind == "bert" else batch["input_ids"]}


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_a_lora_training_forward_compiles_without_graph_breaks(kind):
    model = lora_model(kind, dropout=True)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda batch: model(**batch).loss)(batch_with_labels(kind))
    assert explanation.graph_break_count == 0, [str(reason.reason)[:300] for reason in explanation.break_reasons]


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_a_compiled_training_step_equals_the_eager_step(kind):
    def step(model, module):
        loss = model(**batch_with_labels(kind)).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.requires_grad}

    eager = lora_model(kind, dropout=False)
    eager_loss, eager_grads = step(eager, eager)
    compiled = lora_model(kind, dropout=False)
    torch._dynamo.reset()
    compiled_loss, compiled_grads = step(torch.compile(compiled), compiled)
    assert torch.allclose(compiled_loss, eager_loss, atol=1e-5)
    assert eager_grads.keys() == compiled_grads.keys() and len(eager_grads) > 0
    for name, grad in eager_grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-5), name


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_further_training_steps_do_not_recompile(kind):
    """After the first two steps (BERT's forward sets ``config.problem_type`` on its first call, which compiles
    once more), training steps with an optimizer reuse the compiled graphs."""
    from torch._dynamo.utils import counters

    model = lora_model(kind, dropout=True)
    compiled = torch.compile(model, backend="aot_eager")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for _ in range(5):
        compiled(**batch_with_labels(kind)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[2:] == [graphs[1]] * 3, graphs
