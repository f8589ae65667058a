"""``PeftModel``: a transformers (or any PyTorch) model with named adapters, shaped like peft's API.

``get_peft_model(model, config)`` wraps the modules ``config`` targets (see ``core.targets.plan``),
freezes everything else and makes the active adapter trainable. Adapters can be added, switched,
disabled (a context manager), deleted, merged into the base weights and unmerged, saved in peft's
format and loaded from it. Whatever fails because of bad input fails before the model is touched.
"""

from __future__ import annotations

import contextlib
import re
import inspect
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from peftkit.core.checkpoint import (
    COMPOSITION_NAME,
    CONFIG_NAME,
    FUSION_NAME,
    KEY_PREFIX,
    PROMPT_KEY_PREFIX,
    adapter_folder,
    check_tensors,
    read_adapter_config,
    read_adapter_weights,
    read_json,
    read_tensors,
    write_adapter,
    write_json,
    write_tensors,
)
from peftkit.core.composition import (Composition, LearnedComposition, Parallel, Stack, composition_from_dict,
                                      repeat_batch)
from peftkit.core.config import PeftConfig
from peftkit.core.errors import CheckpointError, ConfigError
from peftkit.core.layer import AdapterLayer, output_width
from peftkit.core.lean import disable_lean_training, enable_lean_training
from peftkit.core.mixed_batch import BASE_MODEL, MixedBatch
from peftkit.core.modules_to_save import ModuleCopies, ModulesToSave
from peftkit.core.prompt import SAVED_KEY, PromptAdapter
from peftkit.core.registry import method_by_peft_type
from peftkit.core.sharding import whole
from peftkit.core.targets import ALL, ALL_LINEAR, Plan, base_of as _base_of, inside_adapter_container, plan


def module_key(path: str) -> str:
    """A module's name in peft's keys: nested adapter layers (``q.base_layer``) stand for their module (``q``)."""
    while path.endswith(".base_layer"):
        path = path[: -len(".base_layer")]
    return path


def parameter_key(name: str) -> str:
    """A base parameter's name in peft's keys: one ``base_layer`` however many adapter layers are nested."""
    return re.sub(r"(\.base_layer)+", ".base_layer", name)


def get_peft_model(model: nn.Module, config: PeftConfig, adapter_name: str = "default",
                   lean_training: bool = True) -> PeftModel:
    """Wrap ``model`` with a new adapter described by ``config``; the model is changed in place.

    ``lean_training`` (default on) keeps less for backward with the same maths (``core.lean``).
    """
    return PeftModel(model, config, adapter_name=adapter_name, lean_training=lean_training)


class PeftModel(nn.Module):
    def __init__(self, model: nn.Module, config: PeftConfig | None = None, adapter_name: str = "default",
                 lean_training: bool = True) -> None:
        super().__init__()
        self.base_model = model
        self.prompt_adapters = nn.ModuleDict()  # prompt-learning adapters, by adapter name
        self.peft_config: dict[str, PeftConfig] = {}
        self.active_adapter: str | None = None  # the one active adapter, None while a composition is active
        self.active_composition: Composition | None = None
        self.trained_in_composition: list[str] | None = None
        self.prompts_disabled = False
        if config is not None:
            self.add_adapter(adapter_name, config)
        if lean_training:
            enable_lean_training(model)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def active_names(self) -> list[str]:
        if self.active_composition is not None:
            return list(self.active_composition.names)
        return [self.active_adapter] if self.active_adapter else []

    def _active_prompt(self) -> PromptAdapter | None:
        prompts = [n for n in self.active_names() if n in self.prompt_adapters]
        return None if self.prompts_disabled or not prompts else self.prompt_adapters[prompts[0]]

    @staticmethod
    def _keywords(args: tuple, kwargs: dict) -> dict:
        if len(args) > 1:
            raise TypeError("pass the model's inputs by keyword (input_ids may come first)")
        return {"input_ids": args[0], **kwargs} if args else dict(kwargs)

    def forward(self, *args, adapter_names: list[str] | None = None, **kwargs):
        """The base model's forward through the active adapter(s); with ``adapter_names`` (one per row of
        the batch, ``"__base__"`` for none) each row goes through its own adapter (``core/mixed_batch.py``)."""
        if adapter_names is not None:
            with self._mixed_batch(adapter_names, self._keywords(args, kwargs)):
                return self.base_model(*args, **kwargs)
        prompt = self._active_prompt()
        if isinstance(self.active_composition, Parallel) and not self.prompts_disabled:
            kwargs = repeat_batch(self._keywords(args, kwargs), len(self.active_composition.names))
            args = ()
        if prompt is None:
            return self.base_model(*args, **kwargs)
        return self.base_model(**prompt.prepare(self.base_model, self._keywords(args, kwargs)))

    def generate(self, *args, adapter_names: list[str] | None = None, **kwargs):
        """The base model's ``generate``, with the active prompt adapter's virtual tokens or prefix, or with
        ``adapter_names`` one adapter per row (each row's beams and returned sequences use its adapter).

        Output as the base model's: for a decoder, the input ids followed by the new tokens.
        """
        if adapter_names is not None:
            copies = max(kwargs.get("num_beams", 1), kwargs.get("num_return_sequences", 1))
            rows = [name for name in adapter_names for _ in range(copies)]
            with self._mixed_batch(rows, self._keywords(args, kwargs), expanded=copies):
                return self.base_model.generate(*args, **kwargs)
        prompt = self._active_prompt()
        if prompt is None:
            return self.base_model.generate(*args, **kwargs)
        kwargs = self._keywords(args, kwargs)
        prepared = prompt.prepare(self.base_model, kwargs)
        output = self.base_model.generate(**prepared)
        input_ids = kwargs.get("input_ids")
        decoder_only = not getattr(self.base_model.config, "is_encoder_decoder", False)
        if input_ids is not None and decoder_only and "input_ids" not in prepared:  # generated from embeddings
            output = torch.cat([input_ids, output], dim=1)
        return output

    @contextlib.contextmanager
    def _mixed_batch(self, names: list[str], inputs: dict, expanded: int = 1):
        """Every adapter layer runs a ``MixedBatch`` of ``names`` while the block runs."""
        names = list(names)
        batch = next((v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
        if batch is not None and batch * expanded != len(names):
            raise ConfigError(f"adapter_names has {len(names) // expanded} entries, but the batch has {batch} rows")
        for name in dict.fromkeys(names):
            if name == BASE_MODEL:
                continue
            self._require(name)
            if name in self.prompt_adapters:
                raise ConfigError(f"adapter '{name}' is prompt learning: it changes the input length, so it cannot "
                                  f"share a batch with other adapters")
        layers = [layer for _, layer in self.adapter_layers()]  # one walk over the modules: they are many
        if any(layer.merged_adapters for layer in layers):
            raise ConfigError("adapter_names needs the adapters unmerged; call unmerge_adapter() first")
        device = next(self.parameters()).device
        mixed = MixedBatch(names, device)
        saved = [(layer, layer.active_adapters, layer.composition) for layer in layers]
        for layer, _, _ in saved:
            layer.active_adapters, layer.composition = list(mixed.names), mixed
        try:
            yield mixed
        finally:
            for layer, active, composition in saved:
                layer.active_adapters, layer.composition = active, composition

    @property
    def accepts_loss_kwargs(self) -> bool:
        """Lets transformers' ``Trainer`` see the wrapped model's forward signature, not ours."""
        if hasattr(self.base_model, "accepts_loss_kwargs"):
            return self.base_model.accepts_loss_kwargs
        parameters = inspect.signature(self.base_model.forward).parameters.values()
        return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)

    def get_base_model(self) -> nn.Module:
        return self.base_model

    # ---- adapters -------------------------------------------------------------------------------
    def adapter_layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        """(path, layer) for every adapter layer, outer before nested (``q.base_layer`` under ``q``)."""
        for name, module in self.base_model.named_modules():
            if isinstance(module, AdapterLayer):
                yield name, module

    def add_adapter(self, adapter_name: str, config: PeftConfig) -> None:
        """Add a new adapter (not made active unless it is the first)."""
        self._check_new_name(adapter_name)
        self._inject(adapter_name, plan(self.base_model, config))

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str,
                             combination_type: str = "svd", svd_rank: int | None = None, density: float | None = None,
                             majority_sign_method: str = "total") -> None:
        """LoRA adapter arithmetic, as peft's: a new adapter from weighted existing ones (linear, cat, svd,
        ties, dare_linear, dare_ties, magnitude_prune and their _svd forms; negative weights negate);
        see ``peftkit/methods/lora_arithmetic.py``."""
        from peftkit.methods.lora_arithmetic import add_weighted_adapter

        add_weighted_adapter(self, adapters, weights, adapter_name, combination_type, svd_rank, density,
                             majority_sign_method)

    def _check_new_name(self, adapter_name: str) -> None:
        if adapter_name in self.peft_config:
            raise ConfigError(f"adapter '{adapter_name}' already exists; delete it first or pick another name")
        if not adapter_name or "." in adapter_name or "/" in adapter_name:
            raise ConfigError(f"adapter name '{adapter_name}' must be non-empty and hold no '.' or '/'")

    def _inject(self, adapter_name: str, the_plan: Plan) -> None:
        config = the_plan.config  # a copy: the caller's config stays as written
        if getattr(config, "target_modules", None) in (ALL_LINEAR, ALL):
            # saved as the module names it meant here, so every reader (peft included) hits the same ones
            config.target_modules = [item.name for item in the_plan.modules if item.role == "adapt"]
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(self.base_model, "name_or_path", None) or None
        try:
            for item in the_plan.modules:
                if item.role == "prompt":
                    self.prompt_adapters[adapter_name] = item.layer_cls(config, self.base_model)
                    continue
                module = self._layer_of_class(item.name, item.layer_cls)
                if module is None:  # wrap the module, or the adapter layers of other methods already on it
                    module = item.layer_cls(self.base_model.get_submodule(item.name))
                    module.active_adapters = self.active_names()
                    module.composition = self.active_composition
                    self._replace(item.name, module)
                module.add_adapter(adapter_name, config, item.name)
                module.attach(self.base_model, item.name, config)
                module.train(module.base_layer.training)  # new dropout follows the model's train / eval mode
        except BaseException:
            self._remove_from_layers(adapter_name)
            raise
        self.peft_config[adapter_name] = config
        if not self.active_names():
            self.set_adapter(adapter_name)
        else:
            self._mark_trainable()

    def _layer_of_class(self, name: str, layer_cls: type) -> AdapterLayer | None:
        module = self.base_model.get_submodule(name)
        while isinstance(module, AdapterLayer) and not isinstance(module, layer_cls):
            module = module.base_layer
        return module if isinstance(module, layer_cls) else None

    def _replace(self, name: str, module: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
        setattr(parent, child, module)

    def _remove_from_layers(self, adapter_name: str) -> None:
        if adapter_name in self.prompt_adapters:
            del self.prompt_adapters[adapter_name]
        for name, layer in reversed(list(self.adapter_layers())):  # nested layers first
            if layer.has_adapter(adapter_name):
                layer.remove_adapter(adapter_name)
            if not layer.adapter_names:
                self._replace(name, layer.unwrapped())

    def _require(self, adapter_name: str) -> PeftConfig:
        if adapter_name not in self.peft_config:
            known = ", ".join(self.peft_config) or "none"
            raise ConfigError(f"no adapter named '{adapter_name}' (adapters: {known})")
        return self.peft_config[adapter_name]

    def set_adapter(self, adapter: str | Composition, train: list[str] | None = None) -> None:
        """Use one adapter, or a composition of several (``Stack``, ``Parallel``, ``Average``, ``BatchSplit``,
        ``Fuse``, ``Scale`` from ``peftkit``), in forward passes.

        One adapter trains; in a composition the adapters named in ``train`` do (default: all of them,
        except under ``Fuse`` / ``Scale``, where their layers train and the adapters stay frozen).
        """
        composition = None if isinstance(adapter, str) else adapter
        names = [adapter] if composition is None else list(composition.names)
        for name in names + list(train or []):
            self._require(name)
        if composition is not None:
            self._check_composition(composition)
        if isinstance(composition, LearnedComposition):
            self._composition_modules(composition)  # every name in modules_to_save must match a module
        if self._merged():
            warnings.warn("unmerging the merged adapters before switching adapters", stacklevel=2)
            self.unmerge_adapter()
        for _, layer in self.adapter_layers():
            layer.active_adapters = names
            layer.composition = composition
        if isinstance(composition, LearnedComposition):
            self._add_fusion_layers(composition)
        self.active_adapter = adapter if composition is None else None
        self.active_composition = composition
        self.trained_in_composition = list(train) if train is not None else None
        self._mark_trainable()

    def _check_composition(self, composition: Composition) -> None:
        prompts = [n for n in composition.names if n in self.prompt_adapters]
        if prompts and not isinstance(composition, Stack):
            raise ConfigError(f"{type(composition).__name__} cannot take prompt-learning adapter(s) {prompts}: they "
                              f"change the input length; only Stack combines them with others")
        if len(prompts) > 1:
            raise ConfigError(f"Stack takes at most one prompt-learning adapter, got {prompts}")

    def _add_fusion_layers(self, fuse: LearnedComposition) -> None:
        holding, state = 0, {}
        for _, layer in self.adapter_layers():
            if isinstance(layer, ModuleCopies) or len(fuse.present(layer)) < fuse.min_present:
                continue
            holding += 1
            if fuse.key not in layer.fusion:
                new = fuse.new_layer(output_width(layer.base), next(layer.base.parameters()), state)
                layer.fusion[fuse.key] = new.train(layer.training)  # follows the model's train / eval mode
        if not holding:
            raise ConfigError(f"{fuse!r}: no module holds two of these adapters, so there is nothing to fuse")

    def delete_adapter(self, adapter_name: str) -> None:
        self._require(adapter_name)
        if self._merged():
            warnings.warn("unmerging the merged adapters before deleting one", stacklevel=2)
            self.unmerge_adapter()
        self._remove_from_layers(adapter_name)
        del self.peft_config[adapter_name]
        if adapter_name in self.active_names():
            self.active_adapter, self.active_composition = None, None
            for _, layer in self.adapter_layers():
                layer.active_adapters, layer.composition = [], None
            if self.peft_config:
                self.set_adapter(next(iter(self.peft_config)))
        self._mark_trainable()

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the base model as it was: ``with model.disable_adapter(): base_logits = model(**batch)``."""
        merged = self._merged()
        if merged:
            self.unmerge_adapter()
        layers = [layer for _, layer in self.adapter_layers()]
        for layer in layers:
            layer.adapters_disabled = True
        self.prompts_disabled = True
        try:
            yield
        finally:
            for layer in layers:
                layer.adapters_disabled = False
            self.prompts_disabled = False
            if merged:
                self.merge_adapter()

    # ---- trainable parameters --------------------------------------------------------------------
    def _mark_trainable(self) -> None:
        for parameter in self.base_model.parameters():
            parameter.requires_grad_(False)
        for parameter in self.prompt_adapters.parameters():
            parameter.requires_grad_(False)
        composition = self.active_composition
        if composition is None:
            trained = self.active_names()
        elif self.trained_in_composition is not None:
            trained = self.trained_in_composition
        else:
            trained = [] if isinstance(composition, LearnedComposition) else list(composition.names)
        for name in trained:
            if not self.peft_config[name].inference_mode:
                for parameter in self._trainable_tensors(name):
                    parameter.requires_grad_(True)
        if isinstance(composition, LearnedComposition):
            for _, layer in self.adapter_layers():
                if composition.key in layer.fusion:
                    layer.fusion[composition.key].requires_grad_(True)
            for parameter in self._composition_modules(composition).values():
                parameter.requires_grad_(True)

    def _composition_modules(self, composition: LearnedComposition) -> dict[str, nn.Parameter]:
        """The parameters of the base modules in ``composition.modules_to_save``, by saved key."""
        found = {}
        for target in composition.modules_to_save:
            matched = {f"modules_to_save.{parameter_key(name)}": p for name, p in self._visible_base_parameters()
                       if f".{target}." in f".{module_key(name.rsplit('.', 1)[0])}."}  # the module or inside it
            if not matched:
                raise ConfigError(f"{composition!r}: modules_to_save names {target!r}, which matches no module "
                                  f"with parameters")
            found.update(matched)
        return found

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # ---- merging ---------------------------------------------------------------------------------
    def _merged(self) -> bool:
        return any(layer.merged_adapters for _, layer in self.adapter_layers())

    def merge_adapter(self, safe_merge: bool = False) -> None:
        """Fold the active adapter into the base weights; ``unmerge_adapter`` takes it out again."""
        if self._active_prompt() is not None:
            raise ConfigError(f"{type(self._active_prompt()).__name__} adds virtual tokens to the input; there is no "
                              f"weight to merge it into")
        if self.active_composition is not None and not isinstance(self.active_composition, Stack):
            raise ConfigError(f"{self.active_composition!r} gives each input its own mix of adapters; only a single "
                              f"adapter or a Stack can be merged into the weights")
        layers = [layer for _, layer in self.adapter_layers()]
        owners: dict[int, list[str]] = {}
        for name, parameter in self.base_model.named_parameters(remove_duplicate=False):
            owners.setdefault(id(parameter), []).append(name)
        for path, layer in self.adapter_layers():
            if not layer.adapters_to_apply():
                continue
            layer.check_mergeable()
            sharing = owners.get(id(getattr(layer.base_layer, "weight", None)), [])
            if len(sharing) > 1:
                raise ConfigError(
                    f"cannot merge into '{path}': its weight is tied to {', '.join(sharing[1:])}, which would change "
                    f"too; exclude it from target_modules or untie the weights first"
                )
        try:
            for layer in reversed(layers):  # nested layers first: an outer one acts on their output
                layer.merge(layer.active_adapters, safe_merge=safe_merge)
        except BaseException:
            self.unmerge_adapter()
            raise

    def unmerge_adapter(self) -> None:
        for _, layer in self.adapter_layers():
            layer.unmerge()

    def merge_and_unload(self, safe_merge: bool = False) -> nn.Module:
        """Merge the active adapter and return the plain base model with the adapter layers removed."""
        self.merge_adapter(safe_merge=safe_merge)
        return self._unwrap_all()

    def unload(self) -> nn.Module:
        """Return the base model without any adapter (nothing merged)."""
        self.unmerge_adapter()
        for _, layer in self.adapter_layers():
            layer.adapters_disabled = True  # so modules_to_save hand back their original module
        return self._unwrap_all()

    def _unwrap_all(self) -> nn.Module:
        disable_lean_training(self.base_model)
        for name, layer in reversed(list(self.adapter_layers())):
            self._replace(name, layer.unwrapped())
        self.prompt_adapters.clear()
        self.peft_config.clear()
        self.active_adapter = None
        return self.base_model

    # ---- saving and loading ----------------------------------------------------------------------
    def _bias_parameters(self, adapter_name: str) -> dict[str, nn.Parameter]:
        """Base-model biases trained with this adapter (LoRA's ``bias='all' | 'lora_only'``)."""
        bias = getattr(self.peft_config[adapter_name], "bias", "none")
        if bias == "none":
            return {}
        if bias == "lora_only":
            return {
                f"{module_key(path)}.base_layer.bias": layer.bias
                for path, layer in self.adapter_layers()
                if layer.has_adapter(adapter_name) and not isinstance(layer, ModulesToSave) and layer.bias is not None
            }
        return {parameter_key(name): p for name, p in self._visible_base_parameters() if name.endswith(".bias")}

    def _visible_base_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Base parameters, without adapter tensors or modules_to_save copies and originals."""
        hidden = [path + "." for path, layer in self.adapter_layers() if isinstance(layer, ModulesToSave)]
        for name, parameter in self.base_model.named_parameters():
            if not any(name.startswith(h) for h in hidden) and not inside_adapter_container(self.base_model, name):
                yield name, parameter

    def _key_prefix(self, adapter_name: str) -> str:
        """peft's prefix for module tensors: prompt-learning adapters sit one level higher."""
        return PROMPT_KEY_PREFIX if adapter_name in self.prompt_adapters else KEY_PREFIX

    def _adapter_tensors(self, adapter_name: str, saving: bool = False) -> dict[str, torch.Tensor]:
        """The adapter's live tensors under their peft file keys (``saving``: in the form files hold)."""
        prefix = self._key_prefix(adapter_name)
        tensors = {}
        if adapter_name in self.prompt_adapters:
            tensors.update(self.prompt_adapters[adapter_name].saved_tensors())
        for path, layer in self.adapter_layers():
            if layer.has_adapter(adapter_name):
                state = layer.saved_state_dict(adapter_name) if saving else layer.adapter_state_dict(adapter_name)
                for key, tensor in state.items():
                    tensors[f"{prefix}{module_key(path)}.{key}"] = tensor
        for key, tensor in self._bias_parameters(adapter_name).items():
            tensors[prefix + key] = tensor
        return tensors

    def _trainable_tensors(self, adapter_name: str) -> list[torch.Tensor]:
        """The leaf parameters that train with the adapter (a prompt encoder's, not its output)."""
        tensors = [t for key, t in self._adapter_tensors(adapter_name).items() if key != SAVED_KEY]
        if adapter_name in self.prompt_adapters:
            tensors += list(self.prompt_adapters[adapter_name].parameters())
        return tensors

    def _expected_tensors(self, the_plan: Plan, config: PeftConfig) -> tuple[dict[str, tuple], dict[str, tuple]]:
        """Keys and shapes a checkpoint for ``the_plan`` must hold, and may hold, worked out before any change.

        Optional: full input / output embedding weights, which peft saves next to an adapter that targets an
        embedding (or after the vocabulary was resized); they are loaded into the base model, as peft does.
        """
        prompt = any(item.role == "prompt" for item in the_plan.modules)
        prefix = PROMPT_KEY_PREFIX if prompt else KEY_PREFIX
        required = {
            (key if item.role == "prompt" else f"{prefix}{item.name}.{key}"): shape
            for item in the_plan.modules for key, shape in item.shapes.items()
        }
        bias = getattr(config, "bias", "none")
        adapted = {item.name for item in the_plan.modules if item.role == "adapt"}
        saved = [item.name + "." for item in the_plan.modules if item.role == "save"]
        embeddings = [self.base_model.get_input_embeddings(), self.base_model.get_output_embeddings()] if hasattr(
            self.base_model, "get_input_embeddings") else []
        optional = {}
        for name, parameter in self._visible_base_parameters():
            if any(name.startswith(s) for s in saved):
                continue
            owner_module = self.base_model.get_submodule(name.rpartition(".")[0]) if "." in name else self.base_model
            owner, _, leaf = parameter_key(name).rpartition(".")
            owner = module_key(owner)
            key = prefix + (f"{owner}.base_layer.{leaf}" if owner in adapted else parameter_key(name))
            if leaf == "bias" and (bias == "all" or (bias == "lora_only" and owner in adapted)):
                required[key] = tuple(parameter.shape)
            elif any(_base_of(owner_module) is e for e in embeddings if e is not None):
                optional[key] = tuple(parameter.shape)
        return required, optional

    def save_pretrained(self, save_directory: str | Path, selected_adapters: list[str] | None = None,
                        is_main_process: bool = True) -> None:
        """Write each adapter in peft's format (``default`` at the root, others in sub-folders).

        With a composition active (and all adapters saved), also ``peftkit_composition.json`` naming it and,
        for ``Fuse`` / ``Scale``, their layers and ``modules_to_save`` in ``peftkit_fusion.safetensors`` (a
        tensor shared by every module, ScaLearn++'s ω, is written once per module).
        A model sharded with FSDP: every process calls this (sharded tensors are gathered), and only the
        one with ``is_main_process`` writes, as in peft.
        """
        for name in selected_adapters or list(self.peft_config):
            config = self._require(name).to_dict()
            config["inference_mode"] = True
            tensors = {key: whole(tensor) for key, tensor in self._adapter_tensors(name, saving=True).items()}
            if is_main_process:
                write_adapter(adapter_folder(save_directory, name), config, tensors)
        composition = self.active_composition
        if composition is None or selected_adapters is not None:
            return
        if isinstance(composition, LearnedComposition):
            tensors = {key: whole(tensor).detach().clone() for key, tensor in self._fusion_tensors(composition).items()}
            if is_main_process:
                write_tensors(Path(save_directory) / FUSION_NAME, tensors)
        if not is_main_process:
            return
        write_json(Path(save_directory) / COMPOSITION_NAME,
                   {"composition": composition.to_dict(), "train": self.trained_in_composition})

    def _fusion_tensors(self, fuse: LearnedComposition) -> dict[str, torch.Tensor]:
        layers = {f"{path}.fusion.{key}": tensor for path, layer in self.adapter_layers() if fuse.key in layer.fusion
                  for key, tensor in layer.fusion[fuse.key].state_dict().items()}
        return {**layers, **self._composition_modules(fuse)}

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, model_id: str | Path, adapter_name: str = "default", is_trainable: bool = False
    ) -> PeftModel:
        """Load an adapter folder written by peftkit or peft onto ``model``.

        A folder saved with a composition active loads all its adapters and activates the composition.
        """
        peft_model = cls(model)
        if (Path(model_id) / COMPOSITION_NAME).is_file():
            peft_model._load_composition(Path(model_id), is_trainable)
        else:
            peft_model.load_adapter(model_id, adapter_name=adapter_name, is_trainable=is_trainable)
        return peft_model

    def _load_composition(self, folder: Path, is_trainable: bool) -> None:
        saved = read_json(folder / COMPOSITION_NAME, "composition file")
        composition = composition_from_dict(saved.get("composition", {}))
        for name in composition.names:
            self.load_adapter(adapter_folder(folder, name), adapter_name=name, is_trainable=is_trainable)
        self.set_adapter(composition, train=saved.get("train"))
        if isinstance(composition, LearnedComposition):
            tensors = read_tensors(folder / FUSION_NAME)
            live = self._fusion_tensors(composition)
            check_tensors(folder / FUSION_NAME, tensors, {k: tuple(v.shape) for k, v in live.items()}, {})
            with torch.no_grad():
                for key, tensor in tensors.items():
                    live[key].copy_(tensor)
        if not is_trainable:
            self.requires_grad_(False)

    def load_adapter(self, model_id: str | Path, adapter_name: str = "default", is_trainable: bool = False) -> None:
        """Read, check, then inject: a missing, corrupt or mismatched file leaves the model unchanged."""
        self._check_new_name(adapter_name)
        raw = read_adapter_config(model_id)
        method = method_by_peft_type(raw["peft_type"])
        config = method.config_cls.from_saved(raw, source=str(Path(model_id) / CONFIG_NAME))
        config.inference_mode = not is_trainable
        tensors, path = read_adapter_weights(model_id)
        the_plan = plan(self.base_model, config)
        required, optional = self._expected_tensors(the_plan, config)
        check_tensors(path, tensors, required, optional)
        self._inject(adapter_name, the_plan)
        if adapter_name in self.prompt_adapters:
            self.prompt_adapters[adapter_name].load_saved(tensors)
            self._mark_trainable()
        live = {**self._adapter_tensors(adapter_name), **self._base_tensors_by_key(self._key_prefix(adapter_name))}
        with torch.no_grad():
            for key, tensor in tensors.items():
                if key != SAVED_KEY:
                    live[key].copy_(tensor.to(live[key].dtype))

    def hotswap_adapter(self, model_id: str | Path, adapter_name: str = "default") -> None:
        """Put the weights saved in ``model_id`` into the loaded adapter ``adapter_name`` in place: no module is
        created or replaced, so references to the model (and compiled graphs) stay valid. The saved adapter must
        be the same method with tensors of the same keys and shapes; its scaling (LoRA's alpha) may differ. A
        mismatch is an error that changes nothing."""
        current = self._require(adapter_name)
        if any(adapter_name in layer.merged_adapters for _, layer in self.adapter_layers()):
            raise ConfigError(f"adapter '{adapter_name}' is merged; unmerge it before hot-swapping its weights")
        raw = read_adapter_config(model_id)
        if raw["peft_type"] != current.peft_type:
            raise CheckpointError(f"{model_id}: a {raw['peft_type']} adapter; '{adapter_name}' is {current.peft_type}")
        config = type(current).from_saved(raw, source=str(Path(model_id) / CONFIG_NAME))
        tensors, path = read_adapter_weights(model_id)
        live = self._adapter_tensors(adapter_name)
        check_tensors(path, tensors, {key: tuple(t.shape) for key, t in live.items()}, {})
        with torch.no_grad():
            for key, tensor in tensors.items():
                live[key].copy_(tensor.to(live[key].dtype))
        for path_name, layer in self.adapter_layers():
            if hasattr(config, "scaling_for") and adapter_name in getattr(layer, "scaling", {}):
                layer.scaling[adapter_name] = config.scaling_for(path_name)
        config.target_modules, config.inference_mode = current.target_modules, current.inference_mode
        self.peft_config[adapter_name] = config

    def load_prompt(self, model_id: str | Path, adapter_name: str = "default") -> None:
        """Start the prompt-learning adapter ``adapter_name`` from the virtual tokens saved in ``model_id``
        (prompt transfer: a source task's trained prompt initialises the target's); the rest of that folder
        (a head, other tensors) is not used."""
        self._require(adapter_name)
        if adapter_name not in self.prompt_adapters:
            raise ConfigError(f"adapter '{adapter_name}' is not a prompt-learning adapter")
        tensors, path = read_adapter_weights(model_id)
        prompt = self.prompt_adapters[adapter_name]
        wanted = tuple(prompt.virtual_tokens().shape)
        if SAVED_KEY not in tensors or tuple(tensors[SAVED_KEY].shape) != wanted:
            found = tuple(tensors[SAVED_KEY].shape) if SAVED_KEY in tensors else "none"
            raise CheckpointError(f"{path}: needs '{SAVED_KEY}' of shape {wanted} to start the prompt from, found {found}")
        prompt.load_saved(tensors)
        self._mark_trainable()

    def _base_tensors_by_key(self, prefix: str) -> dict[str, torch.Tensor]:
        return {prefix + parameter_key(name): p for name, p in self._visible_base_parameters()}
