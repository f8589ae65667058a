"""LiST: lite prompted self-training for few-shot classification.

Wang et al., 2022, "LiST: Lite Prompted Self-training Makes Parameter-efficient Few-shot Learners". On a
frozen masked LM, with lite adapters (``methods/lite_adapter.py``) and a PET pattern (``recipes/pet.py``):

1. Teacher: an adapter fine-tuned on the K labelled examples per class (cross-entropy over the
   verbalizer's label scores).
2. Each of ``rounds`` rounds: the teacher gives soft labels p_T(y | x) on the unlabelled texts; a student
   adapter, freshly initialised, learns them per batch with loss Σᵢ wᵢ · (−Σ_y p_T(y | xᵢ) log p_S(y | xᵢ)),
   wᵢ from meta re-weighting against a batch of the labelled examples (``objectives/meta_weights.py``);
   then the student is fine-tuned on the labelled examples and becomes the next teacher.

The labelled examples, the unlabelled pool and the evaluation set come from ``few_shot_split``. Choices
the paper leaves open: the virtual step size equals the learning rate; each stage runs ``steps``
AdamW steps with a linear decay; the labelled batch for the meta weights is drawn afresh each step.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from peftkit.core.errors import ConfigError
from peftkit.core.peft_model import PeftModel
from peftkit.methods.lite_adapter import LiteAdapterConfig
from peftkit.objectives.meta_weights import meta_weights
from peftkit.recipes.budget import fixed_budget
from peftkit.recipes.pet import (
    ClozeClassifier,
    ClozeCollator,
    ClozeEncoder,
    Pattern,
    cloze_predictions,
    encode_examples,
)
from peftkit.tasks.classification import Examples

LIST_DEFAULTS = {"max_length": 64}  # the setting of benchmarks/few_shot_sst2.py


def few_shot_split(examples: Examples, per_class: int, unlabelled: int | None, seed: int
                   ) -> tuple[Examples, Examples]:
    """(K labelled examples per class, up to ``unlabelled`` of the others, their labels kept only for
    reporting), drawn with ``seed``."""
    order = list(range(len(examples.labels)))
    random.Random(seed).shuffle(order)
    chosen, counts = [], {}
    for i in order:
        label = examples.labels[i]
        if counts.get(label, 0) < per_class:
            chosen.append(i)
            counts[label] = counts.get(label, 0) + 1
    if min(counts.values(), default=0) < per_class or len(counts) < len(set(examples.labels)):
        raise ConfigError(f"fewer than {per_class} training examples for some label")
    rest = [i for i in order if i not in set(chosen)][:unlabelled]

    def subset(indices):
        return Examples([examples.texts[i] for i in indices],
                        [examples.pairs[i] for i in indices] if examples.pairs else None,
                        [examples.labels[i] for i in indices])

    return subset(chosen), subset(rest)


@dataclass
class SelfTrainingSettings:
    rounds: int = 2
    steps: int = 100  # AdamW steps per stage
    batch_size: int = 16
    lr: float = 3e-3
    adapter: dict = field(default_factory=lambda: {"r": 16})


@dataclass
class SelfTrainingResult:
    teacher_accuracy: float  # the first teacher: prompt-based fine-tuning on the labelled examples alone
    round_accuracies: list[float]  # each round's student after its labelled fine-tuning
    trainable_parameters: int
    seconds: float


class SelfTraining:
    """The LiST loop on one frozen masked LM (see the module docstring)."""

    def __init__(self, model, tokenizer, pattern: Pattern, labels: list[str], settings: SelfTrainingSettings,
                 max_length: int = 128, seed: int = 0) -> None:
        self.encoder = ClozeEncoder(tokenizer, pattern.for_labels(labels), labels, causal=False,
                                    max_length=max_length)
        self.settings, self.seed = settings, seed
        self.pad = tokenizer.pad_token_id
        self.collate = ClozeCollator(self.pad, left=False)
        self.peft_model = PeftModel(model)
        self.classifier = ClozeClassifier(self.peft_model, self.encoder)
        self.generation = 0

    def fresh_adapter(self) -> str:
        """A newly initialised lite adapter, the only trainable tensors; the previous one is removed."""
        previous = self.peft_model.active_adapter
        self.generation += 1
        name = f"generation{self.generation}"
        torch.manual_seed(self.seed * 1000 + self.generation)
        self.peft_model.add_adapter(name, LiteAdapterConfig(**self.settings.adapter))
        self.peft_model.set_adapter(name)
        if previous is not None:
            self.peft_model.delete_adapter(previous)
        return name

    def _batches(self, rows: list[dict], generator: random.Random):
        """Endless shuffled batches (the whole set when it is smaller than a batch)."""
        size = min(self.settings.batch_size, len(rows))
        while True:
            order = list(range(len(rows)))
            generator.shuffle(order)
            for start in range(0, len(order) - size + 1, size):
                yield self.collate([rows[i] for i in order[start:start + size]])

    def _optimizer(self):
        parameters = [p for p in self.classifier.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=self.settings.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / self.settings.steps)
        return optimizer, schedule

    def fine_tune(self, labelled: list[dict], what: str) -> None:
        """``steps`` steps of cross-entropy on the labelled examples."""
        optimizer, schedule = self._optimizer()
        batches = self._batches(labelled, random.Random(self.seed + self.generation))
        self.classifier.train()
        for _ in tqdm(range(self.settings.steps), desc=what, unit="step", leave=False):
            loss = self.classifier(**next(batches)).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()

    def soft_labels(self, rows: list[dict]) -> torch.Tensor:
        return torch.softmax(cloze_predictions(self.classifier, rows, self.pad), dim=-1)

    def learn_soft_labels(self, unlabelled: list[dict], soft: torch.Tensor, labelled: list[dict]) -> None:
        """``steps`` steps on teacher soft labels, each batch weighted by meta re-weighting."""
        rows = [{**row, "labels": i} for i, row in enumerate(unlabelled)]  # "labels": the row's index
        optimizer, schedule = self._optimizer()
        generator = random.Random(self.seed + 100 + self.generation)
        batches, labelled_batches = self._batches(rows, generator), self._batches(labelled, generator)
        self.classifier.train()
        for _ in tqdm(range(self.settings.steps), desc="student on soft labels", unit="step", leave=False):
            batch = next(batches)
            targets = soft[batch.pop("labels")]
            labelled_batch = next(labelled_batches)

            def pseudo_losses(module, batch=batch, targets=targets):
                scores = module(**batch).logits
                return -(targets * torch.log_softmax(scores, dim=-1)).sum(-1)

            weights = meta_weights(self.classifier, pseudo_losses, lambda m: m(**labelled_batch).loss,
                                   step_size=self.settings.lr)
            if weights.sum() == 0:
                schedule.step()
                continue
            loss = (weights * pseudo_losses(self.classifier)).sum()
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()

    def save(self, folder) -> None:
        """The current adapter, in peft's layout at the folder's root (as the ``default`` adapter)."""
        from pathlib import Path

        from peftkit.core.checkpoint import write_adapter

        name = self.peft_model.active_adapter
        config = {**self.peft_model.peft_config[name].to_dict(), "inference_mode": True}
        write_adapter(Path(folder), config, self.peft_model._adapter_tensors(name, saving=True))

    def accuracy(self, rows: list[dict]) -> float:
        predicted = cloze_predictions(self.classifier, rows, self.pad).argmax(-1)
        return float((predicted == torch.tensor([r["labels"] for r in rows])).float().mean())

    def run(self, labelled: Examples, unlabelled: Examples, evaluation: Examples) -> SelfTrainingResult:
        started = time.perf_counter()
        labelled_rows, unlabelled_rows, eval_rows = (encode_examples(self.encoder, e)
                                                     for e in (labelled, unlabelled, evaluation))
        self.fresh_adapter()
        trainable = sum(p.numel() for p in self.classifier.parameters() if p.requires_grad)
        self.fine_tune(labelled_rows, "teacher on labelled")
        teacher_accuracy = self.accuracy(eval_rows)
        accuracies = []
        for _ in range(self.settings.rounds):
            soft = self.soft_labels(unlabelled_rows)
            self.fresh_adapter()
            self.learn_soft_labels(unlabelled_rows, soft, labelled_rows)
            self.fine_tune(labelled_rows, "student on labelled")
            accuracies.append(self.accuracy(eval_rows))
        return SelfTrainingResult(teacher_accuracy, accuracies, trainable, time.perf_counter() - started)


def train_list(options, pattern: Pattern, shots: int = 16, unlabelled: int | None = 1000, rounds: int = 2):
    """LiST on ``options``' classification data: ``shots`` labelled examples per class from the training
    file, up to ``unlabelled`` of the others as unlabelled text; the last student saved to ``options.output``."""
    from pathlib import Path

    from peftkit.core.checkpoint import write_json
    from peftkit.core.pretrained import load_masked_lm, resolve_model_dir
    from peftkit.recipes.classification import load_task_data
    from peftkit.recipes.training import TASK_FILE, TrainResult
    from peftkit.utils.memory import peak_rss_mib

    started = time.perf_counter()
    options = fixed_budget(options, LIST_DEFAULTS)
    torch.manual_seed(options.seed)
    data = load_task_data(options)
    labelled, pool = few_shot_split(data.train, shots, unlabelled, options.seed)
    model_dir = resolve_model_dir(options.model)
    tokenizer, model = load_masked_lm(model_dir, require_head=True)
    steps = options.max_steps or 100
    settings = SelfTrainingSettings(rounds=rounds, steps=steps, batch_size=min(options.batch_size, 16),
                                    lr=options.lr or 3e-3, adapter={"r": 16, **options.method_options})
    loop = SelfTraining(model, tokenizer, pattern, data.labels.names, settings, options.max_length, options.seed)
    result = loop.run(labelled, pool, data.eval)
    output = Path(options.output)
    loop.save(output)
    write_json(output / TASK_FILE, {"task": "pet", "labels": data.labels.names, "template": pattern.template,
                                    "verbalizer": loop.encoder.pattern.verbalizer, "causal": False,
                                    "max_length": options.max_length})
    accuracy = result.round_accuracies[-1] if result.round_accuracies else result.teacher_accuracy
    rounds_text = ", ".join(f"{a:.4f}" for a in result.round_accuracies)
    return TrainResult(
        method="list (lite adapters)", model_dir=model_dir, train_examples=len(labelled.labels),
        eval_examples=len(data.eval.labels), labels=data.labels.names,
        trainable_parameters=result.trainable_parameters,
        total_parameters=sum(p.numel() for p in loop.classifier.parameters()), accuracy=accuracy,
        correct=round(accuracy * len(data.eval.labels)), train_seconds=result.seconds,
        wall_seconds=time.perf_counter() - started, peak_memory_mib=peak_rss_mib(), output=output, losses=[],
        step_seconds=[], steps=steps * (1 + 2 * rounds),
        metric=("teacher accuracy", result.teacher_accuracy,
                f"{shots} labelled per class, {len(pool.labels)} unlabelled; after each round: {rounds_text}"))
