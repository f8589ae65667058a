"""Composing several adapters — of one method or of different methods — in one model.

Set with ``PeftModel.set_adapter(block)``. Each adapter layer runs the block on its own input, using
the adapters of the block it holds (an adapter absent from a module leaves that module as it is):

* ``Stack(a, b)`` — b on top of a: a layer applies a then b (LoRA updates add up, sequential
  bottleneck adapters chain, (IA)³ scales multiply); at most one prompt-learning adapter may take part.
* ``Average(a, b, weights=(w_a, w_b))`` — h = Σᵢ wᵢ hᵢ, hᵢ the layer's output with adapter i alone
  (equal weights by default).
* ``BatchSplit(a, b, sizes=(n_a, n_b))`` — the first n_a rows of a batch through a, the next n_b through b.
* ``Parallel(a, b)`` — the model's inputs are repeated once per adapter along the batch, and copy i
  goes through adapter i: several tasks served in one forward pass (outputs: copy 1's rows, then copy 2's…).
* ``Fuse(a, b, …)`` — AdapterFusion (Pfeiffer et al., 2021, "AdapterFusion: Non-Destructive Task
  Composition for Transfer Learning"): at each module holding two or more of the adapters,
  h = Σᵢ softmax_i(⟨q, kᵢ⟩ / √d) vᵢ with q = h₀W_q (h₀ the module's output without adapters),
  kᵢ = hᵢW_k, vᵢ = hᵢW_v; W_v starts at the identity and W_q, W_k near zero, so fusion starts at the
  mean of the adapters. The source adapters stay frozen; the fusion layers train.
* ``Scale(a, b, …)`` — ScaLearn (Frohmann et al., 2024, "ScaLearn: Simple and Highly Parameter-Efficient
  Task Transfer by Learning to Scale"): at each module holding the adapters, o = h + Σₖ ωₖ ⊙ aₖ(h), with
  aₖ(h) adapter k's output before its residual (``AdapterLayer.adapter_deltas``). ωₖ is a vector per
  module (ScaLearn), a scalar per module (``uniform=True``: ScaLearnUniform), or one ω shared by every
  module (``shared=True``: ScaLearn++ / ScaLearnUniform++). ω starts at N(2/N, 0.001²) (N adapters) and
  takes dropout (``dropout``, default 0.1) in training. The adapters stay frozen; ω trains. A module
  holding only some of the adapters (even one) uses their rows of ω.

``Fuse`` and ``Scale`` keep their trained layers in each adapter layer's ``fusion`` dict under the
composition's ``key``, saved in ``peftkit_fusion.safetensors`` together with the base modules named in
their ``modules_to_save`` (the target task's head, trained with them).

Prompt-learning adapters change the input length, so only ``Stack`` takes one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from peftkit.core.errors import ConfigError


class Composition:
    """A block of adapter names; ``run`` computes an adapter layer's output for it."""

    kind = ""

    def __init__(self, *names: str) -> None:
        if len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{type(self).__name__} takes two or more adapter names, got {names!r}")
        if len(set(names)) != len(names):
            raise ConfigError(f"{type(self).__name__} names an adapter twice: {names!r}")
        self.names = tuple(names)

    def present(self, layer) -> list[str]:
        return [n for n in self.names if layer.has_adapter(n)]

    def run(self, layer, args: tuple, kwargs: dict):
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"kind": self.kind, "names": list(self.names)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.names))})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()


class Stack(Composition):
    kind = "stack"

    def run(self, layer, args, kwargs):
        return layer.apply_adapters(list(self.names), *args, **kwargs)


class Average(Composition):
    kind = "average"

    def __init__(self, *names: str, weights: tuple[float, ...] | None = None) -> None:
        super().__init__(*names)
        weights = tuple(weights) if weights is not None else tuple(1 / len(names) for _ in names)
        if len(weights) != len(names):
            raise ConfigError(f"Average: {len(weights)} weights for {len(names)} adapters")
        self.weights = weights

    def run(self, layer, args, kwargs):
        result = None
        for name, weight in zip(self.names, self.weights, strict=True):
            output = layer.apply_adapters([name], *args, **kwargs)
            result = weight * output if result is None else result + weight * output
        return result

    def to_dict(self) -> dict:
        return {**super().to_dict(), "weights": list(self.weights)}


class BatchSplit(Composition):
    kind = "batch_split"

    def __init__(self, *names: str, sizes: tuple[int, ...]) -> None:
        super().__init__(*names)
        if len(sizes) != len(names) or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ConfigError(f"BatchSplit needs one positive size per adapter, got sizes={sizes!r}")
        self.sizes = tuple(sizes)

    def row_sizes(self, batch: int) -> tuple[int, ...]:
        if sum(self.sizes) != batch:
            raise ConfigError(f"BatchSplit sizes {self.sizes} add up to {sum(self.sizes)}, but the batch has "
                              f"{batch} rows")
        return self.sizes

    def run(self, layer, args, kwargs):
        x, rest = args[0], args[1:]
        outputs, start = [], 0
        for name, size in zip(self.names, self.row_sizes(x.shape[0]), strict=True):
            layer.rows = slice(start, start + size)
            try:
                outputs.append(layer.apply_adapters([name], x[start:start + size], *rest, **kwargs))
            finally:
                layer.rows = slice(None)
            start += size
        return torch.cat(outputs, dim=0)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "sizes": list(self.sizes)}


class Parallel(BatchSplit):
    kind = "parallel"

    def __init__(self, *names: str) -> None:
        Composition.__init__(self, *names)
        self.sizes = ()

    def row_sizes(self, batch: int) -> tuple[int, ...]:
        if batch % len(self.names):
            raise ConfigError(f"Parallel: a batch of {batch} rows is not {len(self.names)} equal copies")
        return (batch // len(self.names),) * len(self.names)

    def to_dict(self) -> dict:
        return Composition.to_dict(self)


class Fusion(nn.Module):
    """AdapterFusion's attention over adapter outputs at one module (see the module docstring)."""

    def __init__(self, width: int, like: torch.Tensor) -> None:
        super().__init__()
        options = {"device": like.device, "dtype": like.dtype if like.dtype.is_floating_point else torch.float32}
        self.query = nn.Linear(width, width, **options)
        self.key = nn.Linear(width, width, **options)
        self.value = nn.Linear(width, width, **options)
        for projection in (self.query, self.key):
            nn.init.normal_(projection.weight, std=0.02)
            nn.init.zeros_(projection.bias)
        with torch.no_grad():
            self.value.weight.copy_(torch.eye(width))
            nn.init.zeros_(self.value.bias)

    def forward(self, base_output: torch.Tensor, adapter_outputs: torch.Tensor) -> torch.Tensor:
        query = self.query(base_output).unsqueeze(0)  # 1 × … × d
        keys = self.key(adapter_outputs)  # n × … × d
        scores = (query * keys).sum(-1) / math.sqrt(query.shape[-1])
        weights = torch.softmax(scores, dim=0).unsqueeze(-1)
        return (weights * self.value(adapter_outputs)).sum(0)


class LearnedComposition(Composition):
    """A composition with trained layers at each module holding ``min_present`` or more of its adapters.

    ``modules_to_save`` names base modules (e.g. a new task's ``classifier``) trained with the layers, in
    place, and saved with them.
    """

    min_present = 2

    def __init__(self, *names: str, modules_to_save: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(*names)
        if isinstance(modules_to_save, str) or not all(isinstance(m, str) and m for m in modules_to_save):
            raise ConfigError(f"{type(self).__name__}: modules_to_save must be a list of module names, "
                              f"got {modules_to_save!r}")
        self.modules_to_save = tuple(modules_to_save)

    def to_dict(self) -> dict:
        saved = {"modules_to_save": list(self.modules_to_save)} if self.modules_to_save else {}
        return {**super().to_dict(), **saved}

    @property
    def key(self) -> str:
        """The name the trained layers are kept and saved under."""
        return ",".join(self.names)

    def new_layer(self, width: int, like: torch.Tensor, shared: dict) -> nn.Module:
        """The trained layer for a module of output ``width`` (``shared``: state common to all modules)."""
        raise NotImplementedError

    def combine(self, layer, present: list[str], args, kwargs):
        raise NotImplementedError

    def run(self, layer, args, kwargs):
        present = self.present(layer)
        if len(present) < self.min_present or self.key not in layer.fusion:
            return layer.apply_adapters(list(self.names), *args, **kwargs)
        return self.combine(layer, present, args, kwargs)


class Fuse(LearnedComposition):
    kind = "fuse"

    def new_layer(self, width, like, shared):
        return Fusion(width, like)

    def combine(self, layer, present, args, kwargs):
        base_output, deltas = layer.adapter_deltas(present, *args, **kwargs)  # hᵢ = h₀ + Δᵢ
        return layer.fusion[self.key](base_output, base_output + deltas)


class Scaling(nn.Module):
    """ScaLearn's ω at one module: N × width (or N × 1) weights, possibly the same Parameter as other modules'."""

    def __init__(self, weights: nn.Parameter, dropout: float) -> None:
        super().__init__()
        self.weights = weights
        self.dropout = dropout

    def forward(self, base_output: torch.Tensor, deltas: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """``rows``: which adapters of the composition ``deltas`` holds (a module may hold only some)."""
        omega = nn.functional.dropout(self.weights[rows], self.dropout, self.training)
        omega = omega.view(omega.shape[0], *([1] * (deltas.dim() - 2)), omega.shape[1])
        return base_output + (omega.to(deltas.dtype) * deltas).sum(0)


class Scale(LearnedComposition):
    kind = "scale"
    min_present = 1  # one adapter alone is scaled too

    def __init__(self, *names: str, uniform: bool = False, shared: bool = False, dropout: float = 0.1,
                 modules_to_save: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(*names, modules_to_save=modules_to_save)
        if not 0 <= dropout < 1:
            raise ConfigError(f"Scale: dropout must be in [0, 1), got {dropout!r}")
        self.uniform, self.shared, self.dropout = bool(uniform), bool(shared), float(dropout)

    @property
    def variant(self) -> str:
        return "ScaLearn" + ("Uniform" if self.uniform else "") + ("++" if self.shared else "")

    @property
    def key(self) -> str:
        return f"{self.variant}:{','.join(self.names)}"

    def new_layer(self, width, like, shared):
        columns = 1 if self.uniform else width
        if not self.shared or "weights" not in shared:
            n = len(self.names)
            dtype = like.dtype if like.dtype.is_floating_point else torch.float32
            weights = torch.randn(n, columns, device=like.device, dtype=dtype) * 0.001 + 2 / n
            shared["weights"] = nn.Parameter(weights)
        elif shared["weights"].shape[1] != columns:
            raise ConfigError(f"{self.variant} shares one ω across modules, but they differ in width")
        return Scaling(shared["weights"], self.dropout)

    def combine(self, layer, present, args, kwargs):
        base_output, deltas = layer.adapter_deltas(present, *args, **kwargs)
        return layer.fusion[self.key](base_output, deltas, [self.names.index(name) for name in present])

    def to_dict(self) -> dict:
        return {**super().to_dict(), "uniform": self.uniform, "shared": self.shared, "dropout": self.dropout}


def repeat_batch(kwargs: dict, copies: int) -> dict:
    """Every batch-shaped input (tensors sharing the first tensor's row count) repeated ``copies`` times."""
    tensors = [v for v in kwargs.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    if not tensors:
        return kwargs
    rows = tensors[0].shape[0]
    return {k: torch.cat([v] * copies) if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows else v
            for k, v in kwargs.items()}


KINDS = {cls.kind: cls for cls in (Stack, Average, BatchSplit, Parallel, Fuse, Scale)}


def composition_from_dict(values: dict) -> Composition:
    kind = values.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"unknown composition kind {kind!r}; peftkit has {', '.join(KINDS)}")
    options = {}
    if "weights" in values:
        options["weights"] = tuple(values["weights"])
    if "sizes" in values and kind == "batch_split":
        options["sizes"] = tuple(values["sizes"])
    if kind in ("fuse", "scale") and "modules_to_save" in values:
        options["modules_to_save"] = tuple(values["modules_to_save"])
    if kind == "scale":
        options.update({k: values[k] for k in ("uniform", "shared", "dropout") if k in values})
    return KINDS[kind](*values["names"], **options)
