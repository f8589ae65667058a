"""How a recipe forms its training batches: padding-free where the model keeps packed rows apart, else padded
(``--packing auto``); ``on`` makes a model that cannot an error, ``off`` pads (``core/mechanics/packing.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from peftkit.core.errors import ConfigError
from peftkit.core.mechanics.lean import LEAN_ATTENTION
from peftkit.core.mechanics.packing import PROBE_ROWS, EncoderPackingCollator, PackingCollator, keeps_rows_apart
from peftkit.core.peft_model import PeftModel

BLOCK_MASK_ATTENTION = ("sdpa", "eager", LEAN_ATTENTION)  # the attention implementations taking a 4-D additive mask


@dataclass
class Batches:
    collator: object
    packed: bool
    why_padded: str | None = None

    def describe(self) -> str:
        """For the run's summary: what packing saved, or why batches were padded."""
        return self.collator.describe() if self.packed else self.why_padded


def choose_batches(model, dataset: list[dict], packing: str, padded, packed: Callable[..., PackingCollator],
                   **forward) -> Batches:
    """``padded`` (a collator) or a packing collator made by ``packed(one_row=...)``, as ``packing`` ("auto", "on",
    "off") and the model allow; ``forward``: further arguments of the model's forward for the check. Under flash
    attention a batch is packed into one row: its packed form takes a batch of one."""
    if packing == "off":
        return Batches(padded, False, "padded (--packing off)")
    one_row = "flash" in model.config._attn_implementation
    reason = _why_not_packed(model, dataset, lambda: packed(one_row=one_row), forward)
    if reason is None:
        return Batches(packed(one_row=one_row), True)
    if packing == "on":
        raise ConfigError(f"--packing on: {reason}; use --packing auto or off")
    return Batches(padded, False, f"padded: {reason}")


def _why_not_packed(model, dataset: list[dict], packed: Callable[[], PackingCollator], forward: dict) -> str | None:
    if isinstance(model, PeftModel) and model.prompt_encoder:
        return f"{model.peft_config[model.active_adapter].peft_type} adds virtual tokens to each row"
    attention, probe_collator = model.config._attn_implementation, packed()
    if isinstance(probe_collator, EncoderPackingCollator) and attention not in BLOCK_MASK_ATTENTION:
        return f"{attention} attention takes no block-diagonal mask"
    probe = [token for row in dataset for token in row["input_ids"]][:sum(PROBE_ROWS)]
    if len(probe) < sum(PROBE_ROWS):
        return f"the training data hold fewer than {sum(PROBE_ROWS)} tokens"
    if not keeps_rows_apart(model, probe, probe_collator, **forward):
        return "this model's attention does not keep packed rows apart"
    return None
