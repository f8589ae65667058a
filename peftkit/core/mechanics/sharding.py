"""FSDP2 for training under ``torchrun`` / ``accelerate launch`` (``peftkit train --fsdp``).

transformers shards the frozen base model while loading it (``from_pretrained(distributed_config=...)``,
torch's ``fully_shard`` over all the processes): each transformer layer is a unit whose weights are
gathered for its forward and backward and freed after; the embeddings, final norm and head sit in units
of their own or in the root. Each process keeps 1/N of the base weights. A model to be quantised (QLoRA)
loads whole, is quantised, and is then sharded the same way (``shard_loaded``).

The method's parameters, added after loading, are whole on every process: transformers' Trainer (which
skips DDP for a model sharded at load time) broadcasts them from rank 0 and averages their gradients.
Trainable base parameters (the biases of LoRA's ``bias="all"``, full fine-tuning) stay sharded and FSDP
reduce-scatters their gradients. A module a method trains a copy of (``modules_to_save``, e.g. a fresh classification
head) is copied whole. Saving gathers each sharded tensor on every process; only rank 0 writes.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

UNIT = "free_full_weight"  # transformers' FSDP plan style: gathered for the forward, freed after


def process_count() -> int:
    """How many processes ``torchrun`` / ``accelerate launch`` started (1 without them)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def layer_units(model: nn.Module) -> dict[str, str]:
    """An FSDP plan with every transformer layer its own unit: the items of each ``nn.ModuleList`` whose
    class the model names in ``_no_split_modules`` (``BertLayer``, ``LlamaDecoderLayer``, ...)."""
    layer_classes = set(getattr(model, "_no_split_modules", None) or ())
    return {f"{name}.*": UNIT for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) and len(module) and type(module[0]).__name__ in layer_classes}


def sharded_loading(model_dir: Path, auto_class) -> dict:
    """``from_pretrained`` arguments that shard the model over all processes, one unit per layer."""
    from transformers import AutoConfig
    from transformers.distributed import DistributedConfig

    with torch.device("meta"):  # the module names only: no weights are allocated
        skeleton = auto_class.from_config(AutoConfig.from_pretrained(model_dir))
    return {"distributed_config": DistributedConfig(fsdp_size=process_count(), fsdp_plan=layer_units(skeleton))}


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered from all processes (every process must call this), others as they are."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def whole_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose sharded parameters are gathered whole, so the copy trains on its own."""
    import copy

    from torch.distributed.tensor import DTensor

    gathered = {id(p): nn.Parameter(whole(p.detach()), requires_grad=p.requires_grad)  # deepcopy takes these
                for p in module.parameters() if isinstance(p, DTensor)}
    return copy.deepcopy(module, memo=gathered)


def gather_root(model: nn.Module) -> None:
    """Gather the parameters an FSDP root ``model`` holds itself (``FSDPModule.unshard``), for a use before
    its forward (a prompt's embedding lookup in front of it); its forward and backward reshard them."""
    if is_sharded(model):
        model.unshard()


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` is an FSDP unit (its parameters sharded over the processes)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextmanager
def gathered(module: nn.Module):
    """The parameters of an FSDP unit ``module`` gathered for a use that bypasses its forward (MEFT runs a
    layer's parts itself), and freed after; other modules as they are."""
    if not is_sharded(module):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def held_parameters(model: nn.Module) -> int | None:
    """How many of the model's parameters this process holds when it is sharded with FSDP (None: it is not)."""
    from torch.distributed.tensor import DTensor

    parameters = list(model.parameters())
    if not any(isinstance(p, DTensor) for p in parameters):
        return None
    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in parameters)


def shard_loaded(model: nn.Module) -> None:
    """Shard a model that was loaded whole (QLoRA's, quantised after loading) as transformers shards one
    while loading: each transformer layer a unit, then the root (torch's ``fully_shard`` over all processes);
    then mark it sharded at load time, so that transformers' Trainer leaves its gradients to FSDP instead of
    wrapping it in DDP. torchao's NF4 weights shard whole blocks of scales; a layer too small to split gets
    a one-line error."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from peftkit.core.errors import ConfigError

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    mesh = init_device_mesh(device_type, (process_count(),))
    stacks = [pattern.removesuffix(".*") for pattern in layer_units(model)]
    units = [(f"{stack}.{index}", layer) for stack in stacks
             for index, layer in enumerate(model.get_submodule(stack))]
    for name, module in [*units, ("the model", model)]:
        try:
            fully_shard(module, mesh=mesh)
        except AssertionError as exc:  # torchao: a weight's NF4 scales do not split evenly
            raise ConfigError(f"--fsdp: the 4-bit weights of {name} cannot be split over {process_count()} "
                              f"processes ({exc})") from None
    model._is_distributed_loading_by_transformers = True  # read by transformers' Trainer
    model._is_fsdp_managed_module = True  # read by transformers' generation and gradient accumulation
