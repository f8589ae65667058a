"""Prompt transfer with knowledge distillation (PANDA), and the prompt-transferability metric.

Zhong et al., 2022, "PANDA: Prompt Transfer Meets Knowledge Distillation for Efficient Model Adaptation".

* Transferability of source task s to target task t, from their own trained soft prompts p_s, p_t: with R(p)
  the feed-forward activations of every layer, averaged over the (non-padding) tokens of a fixed probe set
  of texts, concatenated over layers, and R₀ the same without a prompt,

      T(s, t) = cos(R(p_s) − R₀, R(p_t) − R₀)

  i.e. whether the two prompts move the model's neurons the same way (after Su et al., 2022, "On
  Transferability of Prompt Tuning", who compare activated neurons). Symmetric; 1 for a prompt against
  itself. Choices: the probe set is both tasks' texts (the same for both prompts); R₀ is subtracted so
  that what every input activates anyway does not make every pair look alike.
* Vanilla prompt transfer (SPoT): the target prompt starts from the trained source prompt.
* PANDA: the teacher is the source-initialised prompt fine-tuned on the target (vanilla transfer); the
  student also starts from the source prompt and trains with L = CE + β · MSE(z_student, z_teacher)
  (``objectives/distillation.py``), β = β_max · max(T(s, t), 0): the more transferable the source, the more
  the student follows the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from peftkit.objectives.density import feed_forward_activations
from peftkit.recipes.budget import fixed_budget
from peftkit.recipes.classification import train_classifier
from peftkit.recipes.training import TrainOptions, load_saved_adapter


def probe_batches(tokenizer, texts: list[str], max_length: int = 128, batch_size: int = 64) -> list[dict]:
    collate = DataCollatorWithPadding(tokenizer)
    return [collate([tokenizer(t, truncation=True, max_length=max_length) for t in texts[i:i + batch_size]])
            for i in range(0, len(texts), batch_size)]


@torch.no_grad()
def prompt_representation(model, batches: list[dict]) -> torch.Tensor:
    """R: per layer, the mean feed-forward activation over the batches' tokens (virtual tokens left out)."""
    activations = feed_forward_activations(model)
    sums = dict.fromkeys(activations, 0.0)
    kept: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(lambda m, a, out, name=name: kept.__setitem__(name, out))
             for name, module in activations.items()]
    tokens = 0.0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            tokens += float(mask.sum())
            for name, out in kept.items():
                sums[name] = sums[name] + (out[:, -mask.shape[1]:].float() * mask).sum((0, 1))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return torch.cat([sums[name] / tokens for name in activations])


def transferability(peft_model, batches: list[dict], source_dir: str | Path, target_dir: str | Path) -> float:
    """T(s, t) of two saved prompts, on ``peft_model`` holding a prompt-learning adapter of their shape
    (its prompt is replaced by each in turn)."""
    with peft_model.disable_adapter():
        plain = prompt_representation(peft_model, batches)
    representations = []
    for folder in (source_dir, target_dir):
        peft_model.load_prompt(folder)
        representations.append(prompt_representation(peft_model, batches) - plain)
    return float(torch.nn.functional.cosine_similarity(*representations, dim=0))


def saved_transferability(source_dir: str | Path, target_dir: str | Path, probe_texts: list[str],
                          model: str | None = None, max_length: int = 128) -> float:
    """T(s, t) for two prompt-tuning classification adapters saved by ``peftkit train`` on one base model."""
    tokenizer, peft_model, _ = load_saved_adapter(source_dir, "text-classification", model)
    return transferability(peft_model, probe_batches(tokenizer, probe_texts, max_length), source_dir, target_dir)


@dataclass
class PandaResult:
    transferability: float
    distill_weight: float
    scratch: float  # target accuracy of a prompt trained from its usual initialisation
    vanilla: float  # from the source prompt (the teacher)
    panda: float  # from the source prompt, distilling the teacher


def prompt_transfer(source: TrainOptions, target: TrainOptions, work_dir: Path, probe_texts: list[str],
                    max_weight: float = 1.0, source_dir: Path | None = None) -> PandaResult:
    """Source prompt (unless ``source_dir`` holds one), then on the target: from scratch, vanilla transfer
    (the teacher) and PANDA; the options' method must be a soft-prompt method (``prompt``)."""
    work_dir = Path(work_dir)
    source, target = fixed_budget(source), fixed_budget(target)
    if source_dir is None:
        source_dir = work_dir / "source"
        train_classifier(replace(source, output=str(source_dir)))
    scratch = train_classifier(replace(target, output=str(work_dir / "scratch")))
    teacher_dir = work_dir / "vanilla"
    vanilla = train_classifier(replace(target, output=str(teacher_dir), init_prompt=str(source_dir)))
    score = saved_transferability(source_dir, work_dir / "scratch", probe_texts, target.model, target.max_length)
    weight = max_weight * max(score, 0.0)
    panda = train_classifier(replace(target, output=str(work_dir / "panda"), init_prompt=str(source_dir),
                                     teacher=str(teacher_dir), distill_weight=weight))
    return PandaResult(transferability=score, distill_weight=weight, scratch=scratch.accuracy,
                       vanilla=vanilla.accuracy, panda=panda.accuracy)
