"""Multitask prompt tuning: each row's prompt against P ⊙ (Cₜ Rₜ), peft's round trip with task_ids, bad values."""

import peft
import pytest
import torch

import peftkit
from peftkit import ConfigError
from peftkit.methods.multitask_prompt_tuning import MultitaskPromptTuningConfig
from tests.conftest import randomize_trainable, tiny_batch
from tests.methods.test_contract import TASKS, base_model, batch_for

TASK_IDS = torch.tensor([1, 0])


def test_each_row_gets_the_shared_prompt_scaled_by_its_task_s_low_rank_matrix():
    config = MultitaskPromptTuningConfig(num_virtual_tokens=3, num_tasks=2, num_ranks=2, task_type="CAUSAL_LM")
    model = peftkit.get_peft_model(base_model("gpt2"), config)
    randomize_trainable(model, scale=1.0)
    encoder = model.prompt_encoder["default"]
    shared, cols, rows = encoder.embedding.weight, encoder.prefix_task_cols, encoder.prefix_task_rows
    batch = tiny_batch()
    with torch.no_grad():
        got = model(**batch, task_ids=TASK_IDS).logits
        by_hand = torch.stack([shared * (cols[t] @ rows[t]) for t in TASK_IDS.tolist()])
        assert torch.allclose(model.get_prompt(2, task_ids=TASK_IDS), by_hand, atol=1e-6)
        plain = base_model("gpt2")
        embeds = torch.cat([by_hand, plain.get_input_embeddings()(batch["input_ids"])], dim=1)
        mask = torch.cat([torch.ones(2, 3, dtype=batch["attention_mask"].dtype), batch["attention_mask"]], dim=1)
        expected = plain(inputs_embeds=embeds, attention_mask=mask).logits
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_peft_reads_ours_and_we_read_peft_s_with_task_ids(kind, tmp_path):
    double = torch.float64
    config = MultitaskPromptTuningConfig(num_virtual_tokens=4, num_tasks=3, num_ranks=2, task_type=TASKS[kind])
    ours = peftkit.get_peft_model(base_model(kind, double), config)
    randomize_trainable(ours, scale=1.0)
    with torch.no_grad():
        expected = ours(**batch_for(kind), task_ids=TASK_IDS).logits
    ours.save_pretrained(tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(base_model(kind, double), tmp_path / "ours").eval()
    with torch.no_grad():
        assert torch.allclose(theirs(**batch_for(kind), task_ids=TASK_IDS).logits, expected, atol=1e-5)
    theirs.save_pretrained(tmp_path / "theirs")
    back = peftkit.PeftModel.from_pretrained(base_model(kind, double), tmp_path / "theirs")
    with torch.no_grad():
        assert torch.allclose(back(**batch_for(kind), task_ids=TASK_IDS).logits, expected, atol=1e-5)


def test_on_t5_peft_drops_the_decoder_inputs_where_peftkit_runs(tmp_path):
    """peft 0.21.2's multitask prompt for an encoder-decoder with the tokens on the encoder side only
    (num_transformer_submodules=1, peftkit's form) passes on no decoder_input_ids, and T5 refuses that."""
    ours = peftkit.get_peft_model(base_model("t5"), MultitaskPromptTuningConfig(num_virtual_tokens=4, num_tasks=2))
    with torch.no_grad():
        assert torch.isfinite(ours(**batch_for("t5"), task_ids=TASK_IDS).logits).all()
    ours.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(base_model("t5"), tmp_path).eval()
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        theirs(**batch_for("t5"), task_ids=TASK_IDS)


def test_a_source_checkpoint_starts_the_target_from_the_mean_of_its_tasks(tmp_path):
    source = peftkit.get_peft_model(base_model("gpt2"), MultitaskPromptTuningConfig(
        num_virtual_tokens=3, num_tasks=4, num_ranks=2, task_type="CAUSAL_LM"))
    randomize_trainable(source, scale=1.0)
    source.save_pretrained(tmp_path)
    target = peftkit.get_peft_model(base_model("gpt2"), MultitaskPromptTuningConfig(
        num_virtual_tokens=3, num_ranks=2, task_type="CAUSAL_LM", prompt_tuning_init="AVERAGE_SOURCE_TASKS",
        prompt_tuning_init_state_dict_path=str(tmp_path / "adapter_model.safetensors")))
    old, new = source.prompt_encoder["default"], target.prompt_encoder["default"]
    assert torch.equal(new.embedding.weight, old.embedding.weight)
    assert torch.allclose(new.prefix_task_cols[0], old.prefix_task_cols.mean(0), atol=1e-7)
    assert torch.allclose(new.prefix_task_rows[0], old.prefix_task_rows.mean(0), atol=1e-7)


def test_bad_values_and_missing_task_ids_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="num_tasks"):
        MultitaskPromptTuningConfig(num_tasks=0)
    with pytest.raises(ConfigError, match="prompt_tuning_init_state_dict_path"):
        MultitaskPromptTuningConfig(prompt_tuning_init="EXACT_SOURCE_TASK")
    model = peftkit.get_peft_model(base_model("gpt2"), MultitaskPromptTuningConfig(num_tasks=2, task_type="CAUSAL_LM"))
    with pytest.raises(ConfigError, match="task_ids"):
        model(**tiny_batch())
