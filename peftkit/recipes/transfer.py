"""Task transfer from trained source adapters: ScaLearn and AdapterFusion, in two stages.

Stage 1 (``train_source``): a bottleneck adapter (Pfeiffer placement) per source task, trained by the
plain classification recipe; ``source_only`` keeps of its folder the adapter alone (the source task's
head stays behind, as the target has its own labels).

Stage 2 (``train_transfer``): the pretrained model with a fresh head for the target labels, every source
adapter loaded frozen, and one composition over them (``core/composition.py``): ``Scale`` (ScaLearn and
its Uniform / ++ variants: only ω trains) or ``Fuse`` (AdapterFusion: the fusion layers train). The head
trains with them (the composition's ``modules_to_save``, saved with it). Reported: the target score and
the transfer layer's parameter count (head excluded).

Frohmann et al., 2024, "ScaLearn: Simple and Highly Parameter-Efficient Task Transfer by Learning to
Scale"; Pfeiffer et al., 2021, "AdapterFusion: Non-Destructive Task Composition for Transfer Learning".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from peftkit.core.checkpoint import read_adapter_config, read_adapter_weights, write_adapter
from peftkit.core.composition import Fuse, Scale
from peftkit.core.errors import ConfigError
from peftkit.core.peft_model import PeftModel
from peftkit.core.pretrained import load_sequence_classifier
from peftkit.recipes.budget import fixed_budget
from peftkit.recipes.classification import count_correct, load_task_data, train_classifier
from peftkit.recipes.training import TrainOptions, run_trainer
from peftkit.tasks.classification import tokenize

# composition name -> (how to build it over the source names and the head trained with it, default learning rate)
TRANSFER_METHODS = {
    "scalearn": (lambda names, head: Scale(*names, modules_to_save=[head]), 5e-3),
    "scalearn_uniform": (lambda names, head: Scale(*names, uniform=True, modules_to_save=[head]), 5e-3),
    "scalearn++": (lambda names, head: Scale(*names, shared=True, modules_to_save=[head]), 5e-3),
    "scalearn_uniform++": (lambda names, head: Scale(*names, uniform=True, shared=True, modules_to_save=[head]),
                           5e-3),
    "fuse": (lambda names, head: Fuse(*names, modules_to_save=[head]), 5e-4),
}
HEAD_NAMES = ("classifier", "score")


def train_source(options: TrainOptions, folder: Path) -> float:
    """Stage 1: a bottleneck adapter on one source task, saved (adapter only) to ``folder``; its accuracy."""
    result = train_classifier(replace(options, method="bottleneck", output=str(folder / "with_head")))
    source_only(folder / "with_head", folder)
    return result.accuracy


def source_only(trained: Path, folder: Path) -> None:
    """The adapter of a ``peftkit train`` folder without the head it was trained with."""
    config = read_adapter_config(trained)
    tensors, _ = read_adapter_weights(trained)
    adapter = {key: tensor for key, tensor in tensors.items() if ".bottleneck." in key}
    if not adapter:
        raise ConfigError(f"{trained}: no bottleneck adapter tensors; ScaLearn and Fuse transfer bottleneck adapters")
    write_adapter(folder, {**config, "modules_to_save": None, "task_type": None}, adapter)  # no head


@dataclass
class TransferResult:
    model: PeftModel  # the sources, the trained composition and head; ``save_pretrained`` keeps all of it,
    # ``PeftModel.from_pretrained(a model with the target's labels, folder)`` loads it back
    method: str
    accuracy: float
    transfer_parameters: int  # the composition's own trained parameters (ω, or the fusion layers)
    head_parameters: int
    train_seconds: float


def train_transfer(options: TrainOptions, sources: dict[str, Path], method: str) -> TransferResult:
    """Stage 2 on the target task in ``options`` (see the module docstring)."""
    if method not in TRANSFER_METHODS:
        raise ConfigError(f"unknown transfer method {method!r}; peftkit has {', '.join(TRANSFER_METHODS)}")
    if len(sources) < 2:
        raise ConfigError(f"transfer needs two or more source adapters, got {len(sources)}")
    make_composition, default_lr = TRANSFER_METHODS[method]
    options = fixed_budget(options)
    torch.manual_seed(options.seed)
    data = load_task_data(options)
    tokenizer, model = load_sequence_classifier(data.model_dir, data.labels.names)
    peft_model = PeftModel(model)
    for name, folder in sources.items():
        peft_model.load_adapter(folder, adapter_name=name)
    head_name = next(name for name in HEAD_NAMES if hasattr(model, name))
    head = getattr(model, head_name)
    peft_model.set_adapter(make_composition(list(sources), head_name))
    head_parameters = sum(p.numel() for p in head.parameters())
    transfer = sum(p.numel() for p in peft_model.parameters() if p.requires_grad) - head_parameters
    dataset = tokenize(tokenizer, data.train, options.max_length)
    _, seconds = run_trainer(peft_model, dataset, DataCollatorWithPadding(tokenizer), options,
                             options.lr or default_lr)
    correct = count_correct(peft_model, tokenizer, tokenize(tokenizer, data.eval, options.max_length))
    return TransferResult(model=peft_model, method=method, accuracy=correct / len(data.eval.labels),
                          transfer_parameters=transfer,
                          head_parameters=head_parameters, train_seconds=seconds)

