"""Tiny random-initialised transformers models built in memory (no downloads) and shared helpers."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    NemotronConfig,
    NemotronForCausalLM,
    PreTrainedTokenizerFast,
    logging,
)

import peftkit
from peftkit.core import config as config_module
from peftkit.core import registry

logging.set_verbosity_error()
peftkit.load_builtins()

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # the cores shared among the test processes (make test: -n auto)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_modifyitems(items):
    """The slow real-model tests first, so that with several test processes the longest do not start last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def isolated_registry():
    """Each test starts with the built-in methods only: a method a test registers is removed after it."""
    methods, configs = dict(registry._METHODS), dict(config_module._CONFIG_CLASSES)
    yield
    registry._METHODS.clear()
    registry._METHODS.update(methods)
    config_module._CONFIG_CLASSES.clear()
    config_module._CONFIG_CLASSES.update(configs)


VOCAB = 120


def tiny_model(kind: str) -> torch.nn.Module:
    """The same weights every call (seeded), in eval mode so dropout does not blur comparisons."""
    torch.manual_seed(0)
    if kind == "bert":
        config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=48, max_position_embeddings=64, num_labels=3)
        model = BertForSequenceClassification(config)
    elif kind == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                            bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model = GPT2LMHeadModel(config)
    elif kind == "llama":
        config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model = LlamaForCausalLM(config)
    elif kind in ("deepseek", "deepseek_dense"):  # multi-head latent attention, squared-ReLU MLPs (the PLM family)
        config = DeepseekV3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                  n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                                  first_k_dense_replace=1 if kind == "deepseek" else 2, q_lora_rank=16,
                                  kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_group=1,
                                  topk_group=1, hidden_act="relu2", max_position_embeddings=64, bos_token_id=0,
                                  eos_token_id=0, pad_token_id=0)
        model = DeepseekV3ForCausalLM(config)
    elif kind == "nemotron":  # squared-ReLU MLP without a gate
        config = NemotronConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model = NemotronForCausalLM(config)
    else:
        raise ValueError(kind)
    return model.eval()


def word_tokenizer():
    """One word ``w<i>`` per id of the tiny models' vocabulary; ``w0`` pads and ends."""
    core = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w1"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="w0", eos_token="w0", unk_token="w1")


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Every dropout rate of the model set to 0 (modules and the attention rates copied from configs)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for config in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        for field in ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"):
            if hasattr(config, field):
                setattr(config, field, 0.0)
    for module in model.modules():  # attention modules copy the rate at construction
        for field in ("dropout_prob", "attention_dropout"):
            if isinstance(getattr(module, field, None), float):
                setattr(module, field, 0.0)
    return model


def tiny_batch(batch: int = 2, length: int = 9) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits(model: torch.nn.Module, batch: dict | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(**(batch or tiny_batch())).logits


def randomize_trainable(model: torch.nn.Module, seed: int = 2, scale: float = 0.2) -> None:
    """Give every trainable tensor non-trivial values (LoRA's B starts at zero, which hides bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters()):
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def train_losses(model: torch.nn.Module, batch: dict, steps: int, lr: float, extra_loss=None) -> list[float]:
    """AdamW on the trainable parameters for ``steps`` steps on one batch; the loss of each step (the model's
    loss plus ``extra_loss()``, e.g. an objective's term)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def tiny_lora(kind: str, lean_training: bool) -> torch.nn.Module:
    """A tiny model without dropout, LoRA r=4 on every linear layer (non-zero B), in training mode."""
    import peftkit

    model = peftkit.get_peft_model(without_dropout(tiny_model(kind)),
                                   peftkit.LoraConfig(r=4, target_modules="all-linear"), lean_training=lean_training)
    randomize_trainable(model)
    return model.train()


def assert_changed(new: torch.Tensor, old: torch.Tensor, at_least: float = 0.01) -> None:
    """The outputs differ by more than ``at_least`` of their scale (so an adapter really acts)."""
    assert (new - old).abs().max() > at_least * old.abs().max()


def assert_merge_round_trip(model, batch=None, output_tolerance: float = 1e-5, weight_tolerance: float = 1e-6):
    """Merged outputs equal unmerged ones, unmerging restores every weight, and merge_and_unload keeps the
    outputs; returns the plain merged model."""
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = logits(model, batch)
    model.merge_adapter()
    assert (logits(model, batch) - expected).abs().max() <= output_tolerance
    model.unmerge_adapter()
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter, weights[name], atol=weight_tolerance), name
    plain = model.merge_and_unload()
    assert (logits(plain, batch) - expected).abs().max() <= output_tolerance
    return plain


MODEL_KINDS = ["bert", "gpt2", "llama"]
ATTENTION_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


@pytest.fixture(params=MODEL_KINDS)
def kind(request) -> str:
    return request.param


# A tiny BERT folder with a real WordPiece tokenizer, and a CSV / JSONL sentiment task in its words, for
# tests of the command line and the recipes.
WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "film", "plot", "the", "a", "was", "very"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(160):
        positive = i % 2 == 0
        word = ["good", "great", "fine"] if positive else ["bad", "awful", "poor"]
        noun = ["movie", "film", "plot"][int(torch.randint(3, (1,), generator=generator))]
        rows.append({"review": f"the {noun} was very {word[i % 3]}", "sentiment": "pos" if positive else "neg"})
    (folder / "train.csv").write_text("review,sentiment\n" + "".join(f"{r['review']},{r['sentiment']}\n"
                                                                     for r in rows[:120]))
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[120:]))
    return folder


@pytest.fixture(scope="module")
def mlm_dir(model_dir, tmp_path_factory):
    """The tiny BERT folder's tokenizer with a masked-LM head saved."""
    from transformers import AutoTokenizer, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-mlm")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32)
    BertForMaskedLM(config).save_pretrained(folder)
    return folder
