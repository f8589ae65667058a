"""Vocabulary reduction: keep the tokens a corpus (or a set of scripts) needs, drop the other rows.

Abdaoui et al., 2020, "Load What You Need: Smaller Versions of Multilingual BERT"; Alabi et al., 2022,
"Adapting Pre-trained Language Models to African Languages via Multilingual Adaptive Fine-Tuning"
(MAFT). The kept ids K are the special and added tokens, the unknown token, and every token the
tokenizer produces on the corpus (or, with ``scripts``, every token whose letters are all in those
Unicode scripts). Then

    E' = E[K]   (the input embeddings; a tied output matrix follows; an untied one and its bias are cut
                 the same way),  new id of token K[i] = i,

and the tokenizer is rebuilt on the kept tokens in that order. For text the corpus covers, the new
tokenizer gives the same tokens (WordPiece's longest match, BPE's ranked merges and Unigram's best
segmentation only ever used kept pieces; for BPE, the pieces that kept tokens are merged from are kept
too, and merges that make a dropped token are dropped), so hidden states are unchanged. The parameter
reduction is (|V| − |K|) × hidden size per cut matrix (+ the bias rows).
"""

from __future__ import annotations

import difflib
import functools
import json
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedTokenizerFast

from peftkit.core.errors import ConfigError
from peftkit.core.pretrained import output_heads

ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "sep_token_id", "cls_token_id",
             "mask_token_id", "decoder_start_token_id")
WORD_MARKERS = ("##", "Ġ", "▁", "Ċ")


def corpus_token_ids(tokenizer, texts: Iterable[str], batch_size: int = 1000) -> set[int]:
    """Every id the tokenizer gives for ``texts`` (without adding special tokens)."""
    found: set[int] = set()
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            found.update(i for ids in tokenizer(batch, add_special_tokens=False)["input_ids"] for i in ids)
            batch = []
    if batch:
        found.update(i for ids in tokenizer(batch, add_special_tokens=False)["input_ids"] for i in ids)
    return found


def script_of(character: str) -> str | None:
    """The Unicode script word of a letter ("LATIN", "ARABIC", "ETHIOPIC", …); None for non-letters."""
    if not unicodedata.category(character).startswith("L"):
        return None
    name = unicodedata.name(character, "")
    return name.split(" ")[0] if name else None


@functools.cache
def known_scripts() -> frozenset[str]:
    """Every script word ``script_of`` gives for some letter of Unicode."""
    return frozenset(filter(None, (script_of(chr(code)) for code in range(0x30000))))


def check_scripts(scripts: Iterable[str]) -> list[str]:
    """``scripts`` in upper case, or a ``ConfigError`` naming one no Unicode letter belongs to."""
    wanted = [s.strip().upper() for s in scripts]
    for script in wanted:
        if script not in known_scripts():
            close = difflib.get_close_matches(script, sorted(known_scripts()), n=3)
            hint = (f" (did you mean {', '.join(c.lower() for c in close)}?)" if close
                    else " (e.g. latin, arabic, cyrillic)")
            raise ConfigError(f"unknown script '{script.lower()}': no Unicode letter belongs to it{hint}")
    return wanted


def script_token_ids(tokenizer, scripts: Iterable[str]) -> set[int]:
    """Ids of tokens whose letters all belong to ``scripts`` (tokens without letters included)."""
    wanted = set(check_scripts(scripts))
    kept = set()
    for token, index in tokenizer.get_vocab().items():
        text = token
        for marker in WORD_MARKERS:
            text = text.replace(marker, "")
        if all(script_of(ch) in wanted for ch in text if script_of(ch) is not None):
            kept.add(index)
    return kept


def special_token_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(index for index in tokenizer.added_tokens_decoder)
    return ids


def kept_token_ids(tokenizer, texts: Iterable[str] | None = None, scripts: Iterable[str] | None = None) -> list[int]:
    """The sorted old ids to keep: special and added tokens plus the corpus's (and / or the scripts') tokens."""
    if texts is None and scripts is None:
        raise ConfigError("vocabulary reduction needs a corpus (texts) or scripts to keep")
    kept = special_token_ids(tokenizer)
    if texts is not None:
        kept |= corpus_token_ids(tokenizer, texts)
    if scripts is not None:
        kept |= script_token_ids(tokenizer, scripts)
    return sorted(kept)


def _bpe_closure(model: dict, kept_tokens: set[str]) -> set[str]:
    """The kept tokens plus every piece they are merged from, recursively."""
    parts = {}
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        parts.setdefault(left + right, (left, right))
    closed, pending = set(), list(kept_tokens)
    while pending:
        token = pending.pop()
        if token in closed:
            continue
        closed.add(token)
        pending.extend(parts.get(token, ()))
    return closed


def reduced_backend(tokenizer, kept_ids: list[int]) -> tuple[Tokenizer, list[int]]:
    """(the rebuilt ``tokenizers`` object, the final kept old ids in new-id order)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    vocabulary = tokenizer.get_vocab()
    id_to_token = {index: token for token, index in vocabulary.items()}
    kept_tokens = {id_to_token[i] for i in kept_ids}
    if model["type"] == "BPE":
        kept_tokens = _bpe_closure(model, kept_tokens) & set(vocabulary)
    old_ids = sorted(vocabulary[token] for token in kept_tokens)
    new_id = {old: new for new, old in enumerate(old_ids)}
    if model["type"] in ("WordPiece", "BPE", "WordLevel"):
        model["vocab"] = {token: new_id[index] for token, index in model["vocab"].items() if index in new_id}
        if model["type"] == "BPE":
            model["merges"] = [m for m in model["merges"]
                               if "".join(m if isinstance(m, list) else m.split(" ", 1)) in kept_tokens]
    elif model["type"] == "Unigram":
        pieces = model["vocab"]
        model["vocab"] = [pieces[i] for i in old_ids if i < len(pieces)]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    else:
        raise ConfigError(f"vocabulary reduction does not know the {model['type']} tokenizer model")
    for added in spec["added_tokens"]:
        added["id"] = new_id[added["id"]]
    _remap_post_processor(spec.get("post_processor"), new_id)
    return Tokenizer.from_str(json.dumps(spec)), old_ids


def _remap_post_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    if not processor:
        return
    for special in processor.get("special_tokens", {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
        if key in processor:
            processor[key] = [processor[key][0], new_id[processor[key][1]]]
    for inner in processor.get("processors", []):
        _remap_post_processor(inner, new_id)


def reduced_tokenizer(tokenizer, kept_ids: list[int]) -> tuple[PreTrainedTokenizerFast, list[int]]:
    """A transformers tokenizer over the kept tokens (same special tokens and settings); the old ids kept."""
    backend, old_ids = reduced_backend(tokenizer, kept_ids)
    specials = {key: value for key, value in tokenizer.special_tokens_map.items() if key != "additional_special_tokens"}
    new = PreTrainedTokenizerFast(tokenizer_object=backend, **specials,
                                  model_max_length=tokenizer.model_max_length, padding_side=tokenizer.padding_side)
    return new, old_ids


def vocabulary_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, attribute) of every tensor indexed by token id: the input embeddings, the output layer's
    weight and bias, and a head's separate bias over the vocabulary (BERT: ``cls.predictions.bias``)."""
    size = model.config.vocab_size
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    found = [(inputs, "weight")]
    if outputs is not None:
        found += [(outputs, name) for name in ("weight", "bias") if getattr(outputs, name, None) is not None]
        found += [(head, name) for _, head in output_heads(model) for name, p in head._parameters.items()
                  if p is not None and p.dim() == 1 and p.shape[0] == size]
    return found


def reduce_model(model: nn.Module, old_ids: list[int]) -> int:
    """Cut the model's vocabulary tensors to rows ``old_ids`` (new id i = old id old_ids[i]), in place,
    keeping tied tensors tied; returns the number of parameters removed."""
    before = sum(p.numel() for p in model.parameters())
    new_id = {old: new for new, old in enumerate(old_ids)}
    index = torch.tensor(old_ids, device=model.get_input_embeddings().weight.device)
    replaced: dict[int, nn.Parameter] = {}
    for module, name in vocabulary_parameters(model):
        old = getattr(module, name)
        if id(old) not in replaced:
            replaced[id(old)] = nn.Parameter(old.detach().index_select(0, index).clone(),
                                             requires_grad=old.requires_grad)
        setattr(module, name, replaced[id(old)])
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        for size in ("num_embeddings", "out_features"):
            if module is not None and hasattr(module, size):
                setattr(module, size, len(old_ids))
    configs = [model.config] + [getattr(model.config, key) for key in ("text_config", "decoder")
                                if hasattr(getattr(model.config, key, None), "vocab_size")]
    for config in configs:
        config.vocab_size = len(old_ids)
        for field in ID_FIELDS:
            value = getattr(config, field, None)
            if isinstance(value, int):
                if value not in new_id:
                    raise ConfigError(f"vocabulary reduction dropped the model's {field} ({value})")
                setattr(config, field, new_id[value])
    return before - sum(p.numel() for p in model.parameters())


def reduce_vocabulary(model: nn.Module, tokenizer, texts: Iterable[str] | None = None,
                      scripts: Iterable[str] | None = None) -> tuple[nn.Module, PreTrainedTokenizerFast, dict]:
    """(the model cut in place, the new tokenizer, a report) keeping what ``texts`` / ``scripts`` need."""
    kept = kept_token_ids(tokenizer, texts, scripts)
    new_tokenizer, old_ids = reduced_tokenizer(tokenizer, kept)
    vocabulary = len(tokenizer)
    removed = reduce_model(model, old_ids)
    return model, new_tokenizer, {"vocabulary_before": vocabulary, "vocabulary_after": len(old_ids),
                                  "parameters_removed": removed}


def save_reduced(model: nn.Module, tokenizer, folder: str | Path) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
