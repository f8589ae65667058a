"""LayerNorm tuning: train only the normalisation layers' scale (and shift).

Zhao et al., 2023, "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning";
for LN(x) = γ ⊙ (x − μ)/σ + β (RMSNorm: γ ⊙ x / rms(x)) only γ and β train. Each adapter trains its own
copy of every targeted norm, so the pretrained model starts unchanged, disabling restores it and
merging swaps the tuned copy in. Default targets: every normalisation layer of the model (LayerNorm,
RMSNorm and the model-specific norm classes). Saved as peft's LN_TUNING adapters are
(``<norm>.ln_tuning_layers.weight``).
"""

from __future__ import annotations

from torch import nn

from peftkit.core.config import TargetedConfig, config_dataclass
from peftkit.core.modules_to_save import ModuleCopies
from peftkit.core.registry import Method, register_method
from peftkit.core.targets import ALL

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: a torch norm, or a leaf module whose class name ends in "Norm"."""
    if isinstance(module, NORM_TYPES):
        return True
    return type(module).__name__.endswith("Norm") and not any(True for _ in module.children()) and any(
        True for _ in module.parameters())


@config_dataclass
class LNTuningConfig(TargetedConfig):
    """LayerNorm-tuning settings (peft's LN_TUNING); ``target_modules`` defaults to every norm."""

    peft_type = "LN_TUNING"
    omit_at_default = ("layers_to_transform", "layers_pattern")

    def default_target_modules(self, model_type: str | None) -> str:
        return ALL


class NormCopies(ModuleCopies):
    adapter_attributes = ("ln_tuning_layers",)
    copies_attribute = "ln_tuning_layers"

    @classmethod
    def can_wrap(cls, module: nn.Module) -> bool:
        return is_norm(module)


register_method(Method(name="ln_tuning", aliases=("ln",), config_cls=LNTuningConfig,
                       layers={nn.Module: NormCopies},
                       layers_note=" that normalise: LayerNorm, RMSNorm, ...Norm", learning_rate=2e-3,
                       description="LN tuning: only the normalisation layers train"))
