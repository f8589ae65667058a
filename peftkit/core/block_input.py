"""``ReadsBlockInput``: an adapter layer that also reads its block's input at another module.

For blocks without a module of their own (BERT's and BART's feed-forward block), an adapter wraps the
block's output projection and needs the block's input, which is the input of the block's first module
(``intermediate``, ``fc1``). A forward pre-hook on that module, found next to the wrapped one, keeps the
input for the current forward pass only.
"""

from __future__ import annotations

import torch
from torch import nn

from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer
from peftkit.core.targets import name_matches


def _common_prefix(a: str, b: str) -> str:
    parts = []
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        parts.append(x)
    return ".".join(parts)


class ReadsBlockInput(AdapterLayer):
    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self._input_hook = None
        self.block_input: torch.Tensor | None = None

    def read_input_at(self, model: nn.Module, module_name: str, source: list[str] | str, setting: str) -> None:
        """Capture the input of the module matching ``source`` nearest to ``module_name`` (``setting``
        names the config field, for the error)."""
        if self._input_hook is not None:
            return
        candidates = [n for n, _ in model.named_modules() if name_matches(n, source)]
        if not candidates:
            raise ConfigError(f"{setting}={source!r} matches no module")
        nearest = max(candidates, key=lambda n: len(_common_prefix(n, module_name)))
        self._input_hook = model.get_submodule(nearest).register_forward_pre_hook(self._capture)

    def _capture(self, module, args) -> None:
        self.block_input = args[0]

    def stop_reading_input(self) -> None:
        if self._input_hook is not None:
            self._input_hook.remove()
            self._input_hook = None
            self.block_input = None

    def unwrapped(self) -> nn.Module:
        self.stop_reading_input()
        return super().unwrapped()

    def forward(self, *args, **kwargs):
        try:
            return super().forward(*args, **kwargs)
        finally:
            self.block_input = None  # captured for this pass only
