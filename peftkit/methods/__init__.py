"""What is trained: each module here holds one method's config and layers and registers it."""

from peftkit.methods import (  # noqa: F401  (each registers its method)
    adalora,
    apet,
    bitfit,
    bottleneck,
    ia3,
    increlora,
    lite_adapter,
    ln_tuning,
    lora,
    meft,
    p_tuning,
    prefix_tuning,
    prompt_tuning,
    vl_pet,
)
