"""Every method type of the installed peft, taken from ``peft.PeftType``: peftkit reads an adapter that peft itself
made (with peft's own initialisation, randomised) with equal outputs, and peft reads it back from peftkit; or the
type is listed below with the reason peftkit refuses it, and a folder of that type is refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import peft
import pytest
import torch
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

import peftkit
from peftkit.core.errors import PeftkitError
from peftkit.core.registry import registered_methods
from tests.conftest import randomize_trainable, tiny_batch, tiny_model

SUPPORTED = sorted({m.config_cls.peft_type for m in registered_methods().values() if m.peft_reads})
# Types peftkit does not read, each with its reason.
REFUSED = {
    "ADAMSS": "peft's AdaMSS clusters the weight's singular vectors with scikit-learn's KMeans (its random draws "
              "decide the subspaces); peftkit does not depend on scikit-learn, and peft itself cannot run without it",
    "PSOFT": "peft's PSOFT initialises only float32 / float16 / bfloat16 weights (TypeError otherwise), so the float64 "
             "comparison every method passes cannot run; not implemented",
    "SHADOW": "not implemented",
    "XLORA": "not implemented",
}
# What peft's config for a type needs beyond its defaults to apply to the tiny Llama (or, "model": "bert", BERT).
PEFT_SETTINGS = {
    "ADALORA": {"total_step": 10, "init_r": 4, "target_r": 2},
    "ADAPTION_PROMPT": {"adapter_len": 4, "adapter_layers": 1},
    "C3A": {"block_size": 16},
    "CARTRIDGE": {"num_virtual_tokens": 4},
    "FOURIERFT": {"n_frequency": 100},
    "LN_TUNING": {"target_modules": ["input_layernorm", "norm"]},
    "MISS": {"r": 16},
    "MULTITASK_PROMPT_TUNING": {"num_virtual_tokens": 4, "num_tasks": 2},
    "POLY": {"n_tasks": 2},
    "PREFIX_TUNING": {"num_virtual_tokens": 4},
    "PROMPT_TUNING": {"num_virtual_tokens": 4},
    "P_TUNING": {"num_virtual_tokens": 4, "encoder_hidden_size": 16},
    "ROAD": {"group_size": 16},
    "SHIRA": {"r": 4},
    "TRAINABLE_TOKENS": {"token_indices": [8, 32, 33, 90]},
    "VBLORA": {"vector_length": 16},
    "WAVEFT": {"n_frequency": 100},
}
# Inputs a type takes at forward time besides the batch (a task id per row)
FORWARD_INPUTS = {"MULTITASK_PROMPT_TUNING": {"task_ids": torch.tensor([0, 1])},
                  "POLY": {"task_ids": torch.tensor([0, 1])}}


def test_every_peft_type_is_read_or_refused_with_a_reason():
    types = {t.value for t in peft.PeftType}
    assert types == set(SUPPORTED) | set(REFUSED), sorted(types ^ (set(SUPPORTED) | set(REFUSED)))
    assert not set(SUPPORTED) & set(REFUSED), sorted(set(SUPPORTED) & set(REFUSED))
    assert all(reason.strip() for reason in REFUSED.values())


def test_the_guide_for_peft_users_lists_the_types_read_and_refused():
    guide = (Path(__file__).parents[2] / "docs" / "guides" / "moving-from-peft.md").read_text()
    section = guide[guide.index("## Method types"):guide.index("## torch.compile")]
    listed = section[section.index("peft 0.21.2:"):section.index(". For")]
    assert sorted(re.findall(r"[A-Z][A-Z0-9_]+", listed.removeprefix("peft 0.21.2:"))) == SUPPORTED
    assert f"{len(SUPPORTED)} of the {len(list(peft.PeftType))}" in section
    refused = section[section.index("Not read"):section.index("Where peftkit's form differs")]
    assert set(re.findall(r"^\| ([A-Z_0-9]+) \|", refused, flags=re.MULTILINE)) == set(REFUSED)


def peft_made(peft_type: str, folder):
    """An adapter peft makes on the tiny Llama (float64) with its own initialisation, randomised and saved; and
    the output of peft's model loaded from that folder (so that only what the file holds counts)."""
    settings = dict(PEFT_SETTINGS.get(peft_type, {}))
    config = peft.PeftConfig.from_peft_type(peft_type=peft_type, task_type="CAUSAL_LM", **settings)
    model = peft.get_peft_model(tiny_model("llama").double(), config)
    randomize_trainable(model, scale=0.05)
    model.save_pretrained(folder)
    return peft_output(folder, peft_type)


def peft_output(folder, peft_type: str) -> torch.Tensor:
    model = peft.PeftModel.from_pretrained(tiny_model("llama").double(), folder).eval()
    with torch.no_grad():
        return model(**tiny_batch(), **FORWARD_INPUTS.get(peft_type, {})).logits


@pytest.mark.parametrize("peft_type", SUPPORTED)
def test_an_adapter_peft_made_loads_in_peftkit_and_back_with_equal_outputs(peft_type, tmp_path):
    expected = peft_made(peft_type, tmp_path / "theirs")
    base = tiny_model("llama").double()
    with torch.no_grad():  # the adapter changes the output (virtual tokens: its length)
        plain = base(**tiny_batch()).logits
    assert plain.shape != expected.shape or not torch.allclose(plain, expected, atol=1e-4)
    ours = peftkit.PeftModel.from_pretrained(base, tmp_path / "theirs")
    with torch.no_grad():
        assert torch.allclose(ours(**tiny_batch(), **FORWARD_INPUTS.get(peft_type, {})).logits, expected, atol=1e-5)
    ours.save_pretrained(tmp_path / "ours")
    assert torch.allclose(peft_output(tmp_path / "ours", peft_type), expected, atol=1e-5)


@pytest.mark.parametrize("peft_type", sorted(REFUSED))
def test_a_refused_type_is_refused_in_one_line_naming_it(peft_type, tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(f'{{"peft_type": "{peft_type}", "task_type": "CAUSAL_LM"}}')
    with pytest.raises(PeftkitError) as error:
        peftkit.PeftModel.from_pretrained(tiny_model("llama"), folder)
    assert peft_type in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("peft_type", SUPPORTED)
def test_each_type_s_config_is_reachable_under_peft_s_name(peft_type):
    """``import peftkit as peft`` then ``peft.LoHaConfig(...)``: every supported type's config, by peft's name."""
    name = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type].__name__
    assert getattr(peftkit, name).peft_type == peft_type
