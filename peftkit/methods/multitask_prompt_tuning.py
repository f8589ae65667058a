"""Multitask prompt tuning: one shared prompt, scaled element-wise by a low-rank matrix per task.

Wang et al., 2023, "Multitask Prompt Tuning Enables Parameter-Efficient Transfer Learning". Row b of the batch,
of task t = task_ids[b], gets in front of its input embeddings

    Pₜ = P ⊙ (Cₜ Rₜ),   P ∈ R^{v × d},  Cₜ ∈ R^{v × r},  Rₜ ∈ R^{r × d},

with P shared by all tasks (initialised as prompt tuning's: random, or from a text) and the task factors Cₜ, Rₜ
(``num_tasks`` of each, rank r = ``num_ranks``) drawn from N(0, 0.02²). The source-task starts of the paper read P,
C and R from a checkpoint of the source training (``prompt_tuning_init_state_dict_path``): the mean over its tasks
(``AVERAGE_SOURCE_TASKS``), one of them (``EXACT_SOURCE_TASK``), or P alone (``ONLY_SOURCE_SHARED``).

The forward takes ``task_ids`` (one per row), as peft's does; with a single task they may be left out (task 0),
where peft insists on them. Saved tensors, as peft's: ``prompt_embeddings`` (P, not the product),
``prefix_task_cols`` (C, tasks × v × r), ``prefix_task_rows`` (R, tasks × r × d).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from peftkit.core.config import config_dataclass
from peftkit.core.errors import ConfigError
from peftkit.core.prompt import SAVED_KEY, PromptLearningConfig
from peftkit.core.registry import Method, register_method
from peftkit.methods.prompt_tuning import SoftPrompt

SOURCE_INITS = ("AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK", "ONLY_SOURCE_SHARED")
INITS = ("RANDOM", "TEXT", *SOURCE_INITS)
COLS, ROWS = "prefix_task_cols", "prefix_task_rows"


@config_dataclass
class MultitaskPromptTuningConfig(PromptLearningConfig):
    """Multitask prompt-tuning settings, with peft's field names (prompt tuning's, and the tasks')."""

    peft_type = "MULTITASK_PROMPT_TUNING"
    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict | None = None
    prompt_tuning_init_state_dict_path: str | None = None
    prompt_tuning_init_task: int | None = 0
    num_ranks: int | None = 1
    num_tasks: int | None = 1

    def validate(self) -> None:
        super().validate()
        if self.prompt_tuning_init not in INITS:
            raise ConfigError(f"prompt_tuning_init must be one of {', '.join(INITS)}, got {self.prompt_tuning_init!r}")
        for name in ("num_ranks", "num_tasks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.prompt_tuning_init in SOURCE_INITS and not self.prompt_tuning_init_state_dict_path:
            raise ConfigError(f"prompt_tuning_init={self.prompt_tuning_init} needs prompt_tuning_init_state_dict_path")


def _read_source(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ConfigError(f"prompt_tuning_init_state_dict_path '{path}' is not a file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


class MultitaskPrompt(SoftPrompt):
    takes_task_ids = True

    def __init__(self, config: MultitaskPromptTuningConfig, model: nn.Module) -> None:
        super().__init__(config, model)
        options = self.tensor_options(model)
        v, r, d = config.num_virtual_tokens, config.num_ranks, config.token_dim
        self.prefix_task_cols = nn.Parameter(torch.randn(config.num_tasks, v, r, **options) * 0.02)
        self.prefix_task_rows = nn.Parameter(torch.randn(config.num_tasks, r, d, **options) * 0.02)
        if config.prompt_tuning_init in SOURCE_INITS:
            self._start_from_source(config)

    @torch.no_grad()
    def _start_from_source(self, config: MultitaskPromptTuningConfig) -> None:
        source = _read_source(config.prompt_tuning_init_state_dict_path)
        start = {SAVED_KEY: source[SAVED_KEY]}
        if config.prompt_tuning_init == "AVERAGE_SOURCE_TASKS":
            start.update({key: source[key].mean(0, keepdim=True) for key in (COLS, ROWS)})
        elif config.prompt_tuning_init == "EXACT_SOURCE_TASK":
            task = config.prompt_tuning_init_task or 0
            start.update({key: source[key][task : task + 1] for key in (COLS, ROWS)})
        for key, tensor in start.items():
            own = self.saved_tensors()[key]
            if own.shape != tensor.shape:
                raise ConfigError(f"prompt_tuning_init_state_dict_path: '{key}' has shape {tuple(tensor.shape)}, "
                                  f"this adapter needs {tuple(own.shape)}")
            own.copy_(tensor)

    @classmethod
    def expected_shapes(cls, config: MultitaskPromptTuningConfig) -> dict[str, tuple]:
        v, r = config.num_virtual_tokens, config.num_ranks
        return {SAVED_KEY: (v, config.token_dim), COLS: (config.num_tasks, v, r), ROWS: (config.num_tasks, r,
                                                                                         config.token_dim)}

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        return {SAVED_KEY: self.embedding.weight, COLS: self.prefix_task_cols, ROWS: self.prefix_task_rows}

    @torch.no_grad()
    def load_saved(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, own in self.saved_tensors().items():
            own.copy_(tensors[key].to(own.dtype))

    def batch_prompts(self, batch: int, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        if task_ids is None:
            if self.config.num_tasks != 1:
                raise ConfigError(f"this adapter has {self.config.num_tasks} tasks: pass task_ids, one per row")
            task_ids = torch.zeros(batch, dtype=torch.long)
        task_ids = torch.as_tensor(task_ids, device=self.prefix_task_cols.device).long().reshape(-1)
        if task_ids.numel() != batch:
            raise ConfigError(f"task_ids has {task_ids.numel()} entries, but the batch has {batch} rows")
        scale = self.prefix_task_cols[task_ids] @ self.prefix_task_rows[task_ids]
        return self.embedding.weight.unsqueeze(0) * scale


register_method(Method(name="multitask_prompt_tuning", config_cls=MultitaskPromptTuningConfig, layers={},
                       prompt_cls=MultitaskPrompt,
                       learning_rate=3e-2, unchanged_at_start=False,
                       description="multitask prompt tuning: a shared prompt scaled by a low-rank matrix per task"))
