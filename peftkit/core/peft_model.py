"""``PeftModel``: a transformers (or any PyTorch) model with named adapters, shaped like peft's API.

``get_peft_model(model, config)`` wraps the modules ``config`` targets (see ``core.targets.plan``),
freezes everything else and makes the active adapter trainable. Adapters can be added, switched,
disabled (a context manager), deleted, merged into the base weights and unmerged, saved in peft's
format and loaded from it. Whatever fails because of bad input fails before the model is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import warnings
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
)

from peftkit.core.adapter_files import AdapterFiles, module_key, parameter_key
from peftkit.core.composition import Composition, LearnedComposition, Parallel, Stack, repeat_batch
from peftkit.core.config import PeftConfig, reshaped
from peftkit.core.errors import ConfigError
from peftkit.core.layer import AdapterLayer, output_width
from peftkit.core.mechanics.lean import disable_lean_training, enable_lean_training
from peftkit.core.mixed_batch import BASE_MODEL, MixedBatch
from peftkit.core.modules_to_save import ModuleCopies
from peftkit.core.peft_surface import PeftModelSurface, RecognisedAsPeft
from peftkit.core.prompt import PromptAdapter
from peftkit.core.registry import method_for_config
from peftkit.core.targets import ALL, ALL_LINEAR, TASK_HEAD_NAMES, Plan, adapted_bases, plan
from peftkit.core.tuner import TunerModel

_TASK_MODEL_NAMES = {"CAUSAL_LM": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                     "SEQ_2_SEQ_LM": MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
                     "SEQ_CLS": MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                     "TOKEN_CLS": MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
                     "QUESTION_ANS": MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES}


def task_type_of(model: nn.Module) -> str:
    """peft's task type for a transformers model, from its class (``FEATURE_EXTRACTION`` for a bare model)."""
    name = type(model).__name__
    for task_type, names in _TASK_MODEL_NAMES.items():
        if any(name == value or (isinstance(value, tuple) and name in value) for value in names.values()):
            return task_type
    return "FEATURE_EXTRACTION"


def get_peft_model(model: nn.Module, config: PeftConfig, adapter_name: str = "default", mixed: bool = False,
                   autocast_adapter_dtype: bool | None = None, revision: str | None = None,
                   low_cpu_mem_usage: bool = False, lean_training: bool = True) -> PeftModel:
    """Wrap ``model`` with a new adapter described by ``config``; the model is changed in place.

    With a ``task_type`` the wrapper is that task's class (``PeftModelForCausalLM`` …), as in peft.
    ``lean_training`` (default on) keeps less for backward with the same maths (``core.lean``).
    ``autocast_adapter_dtype=True`` keeps a float16 / bfloat16 model's adapter weights in float32, as peft
    does by default; peftkit's default (None) keeps them in the model's dtype. ``mixed`` is accepted: every
    peftkit model can hold adapters of different methods. ``low_cpu_mem_usage`` changes nothing here: new
    adapter weights are small and made in place.
    """
    del mixed, low_cpu_mem_usage
    if revision is not None:
        config = dataclasses.replace(config, revision=revision)
    model_class = PeftModel.for_task(config.task_type)
    return model_class(model, config, adapter_name=adapter_name, lean_training=lean_training,
                       autocast_adapter_dtype=autocast_adapter_dtype)


class PeftModel(AdapterFiles, PeftModelSurface, RecognisedAsPeft):
    """A model with named adapters. ``base_model`` is a ``TunerModel`` holding the model as ``.model`` (or, when
    the first adapter is prompt learning, the model itself), so names read as in peft."""

    peft_config = None  # adapter name -> config: a plain attribute here, not peft's property
    _task_type: ClassVar[str | None] = None  # the task of a task subclass (PeftModelForCausalLM: "CAUSAL_LM")
    _task_classes: ClassVar[dict[str, type[PeftModel]]] = {}

    def __init_subclass__(cls, task_type: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if task_type is not None:
            cls._task_type = task_type
            PeftModel._task_classes[task_type] = cls

    @classmethod
    def for_task(cls, task_type: str | None) -> type[PeftModel]:
        """The wrapper class for ``task_type`` (peft's task classes); a task subclass stays itself."""
        return cls if cls._task_type is not None else PeftModel._task_classes.get(task_type, cls)

    def __init__(self, model: nn.Module, peft_config: PeftConfig | None = None, adapter_name: str = "default",
                 autocast_adapter_dtype: bool | None = None, low_cpu_mem_usage: bool = False,
                 lean_training: bool = True) -> None:
        nn.Module.__init__(self)  # peft's __init__ is not run (see RecognisedAsPeft)
        del low_cpu_mem_usage
        self.peft_config: dict[str, PeftConfig] = {}
        self.base_model = model
        self.prompt_encoder = nn.ModuleDict()  # prompt-learning adapters, by adapter name
        self.shared_tensors = nn.ModuleDict()  # adapters' model-level tensors (core.shared), by adapter name
        self.active_adapter: str | None = None  # the one active adapter, None while a composition is active
        self.active_composition: Composition | None = None
        self.trained_in_composition: list[str] | None = None
        self.prompts_disabled = False
        self.inference_only = False  # set_adapter(..., inference_mode=True): nothing trains
        if peft_config is not None:
            self.add_adapter(adapter_name, peft_config, autocast_adapter_dtype=autocast_adapter_dtype)
        if lean_training:
            enable_lean_training(model)

    def __getattr__(self, name: str):
        try:
            return nn.Module.__getattr__(self, name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def _hold_for(self, config: PeftConfig) -> None:
        """Before the first adapter: put the model one level down (``base_model.model``) unless the adapter is
        prompt learning, which in peft sits beside the model (``base_model`` is the model, ``word_embeddings``
        its input embedding)."""
        if self.peft_config or isinstance(self.base_model, TunerModel):
            return
        if config.is_prompt_learning:
            self.word_embeddings = self.base_model.get_input_embeddings()
        else:
            self.base_model = TunerModel(self.base_model, self.peft_config)

    def active_names(self) -> list[str]:
        if self.active_composition is not None:
            return list(self.active_composition.names)
        return [self.active_adapter] if self.active_adapter else []

    def _active_prompt(self) -> PromptAdapter | None:
        prompts = [n for n in self.active_names() if n in self.prompt_encoder]
        return None if self.prompts_disabled or not prompts else self.prompt_encoder[prompts[0]]

    @staticmethod
    def _keywords(args: tuple, kwargs: dict) -> dict:
        if len(args) > 1:
            raise TypeError("pass the model's inputs by keyword (input_ids may come first)")
        return {"input_ids": args[0], **kwargs} if args else dict(kwargs)

    def forward(self, *args, adapter_names: list[str] | None = None, **kwargs):
        """The base model's forward through the active adapter(s); with ``adapter_names`` (one per row of
        the batch, ``"__base__"`` for none) each row goes through its own adapter (``core/mixed_batch.py``)."""
        task_ids = self._task_ids(kwargs)
        if adapter_names is not None:
            with self._mixed_batch(adapter_names, self._keywords(args, kwargs)), self._layer_task_ids(task_ids):
                return self.base_model(*args, **kwargs)
        prompt = self._active_prompt()
        if isinstance(self.active_composition, Parallel) and not self.prompts_disabled:
            kwargs = repeat_batch(self._keywords(args, kwargs), len(self.active_composition.names))
            args = ()
        with self._layer_task_ids(task_ids):
            if prompt is None:
                return self.base_model(*args, **kwargs)
            inputs = self._keywords(args, kwargs)
            if task_ids is not None and prompt.takes_task_ids:
                inputs["task_ids"] = task_ids
            return prompt.run(self.base_model, self.get_base_model(), inputs)

    def _task_layers(self) -> list[AdapterLayer]:
        return [layer for _, layer in self.adapter_layers() if getattr(layer, "takes_task_ids", False)]

    def _task_ids(self, kwargs: dict) -> torch.Tensor | None:
        """Pop peft's ``task_ids`` from ``kwargs``: each row's task, for an adapter that takes them (multitask prompt
        tuning's prompt, Poly's layers)."""
        task_ids = kwargs.pop("task_ids", None)
        if task_ids is not None:
            prompt = self._active_prompt()
            if not (prompt is not None and prompt.takes_task_ids) and not self._task_layers():
                raise ConfigError("task_ids pick each row's task of a multitask adapter; the active adapter takes "
                                  "none")
        return task_ids

    @contextlib.contextmanager
    def _layer_task_ids(self, task_ids: torch.Tensor | None):
        """The layers that take ``task_ids`` read them from their ``task_ids`` attribute while the model runs."""
        layers = self._task_layers() if task_ids is not None else []
        for layer in layers:
            layer.task_ids = task_ids
        try:
            yield
        finally:
            for layer in layers:
                layer.task_ids = None

    def generate(self, *args, adapter_names: list[str] | None = None, **kwargs):
        """The base model's ``generate``, with the active prompt adapter's virtual tokens or prefix, or with
        ``adapter_names`` one adapter per row (each row's beams and returned sequences use its adapter).

        Output as the base model's: for a decoder, the input ids followed by the new tokens.
        """
        if adapter_names is not None:
            copies = max(kwargs.get("num_beams", 1), kwargs.get("num_return_sequences", 1))
            rows = [name for name in adapter_names for _ in range(copies)]
            with self._mixed_batch(rows, self._keywords(args, kwargs), expanded=copies):
                return self.get_base_model().generate(*args, **kwargs)
        task_ids = self._task_ids(kwargs)
        prompt = self._active_prompt()
        if prompt is None:
            with self._layer_task_ids(task_ids):
                return self.get_base_model().generate(*args, **kwargs)
        kwargs = self._keywords(args, kwargs)
        extra = {"task_ids": task_ids} if task_ids is not None else {}
        prepared = prompt.prepare(self.get_base_model(), {**kwargs, **extra})
        output = self.get_base_model().generate(**prepared)
        input_ids = kwargs.get("input_ids")
        decoder_only = not getattr(self.get_base_model().config, "is_encoder_decoder", False)
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
            if name in self.prompt_encoder:
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
        if hasattr(self.get_base_model(), "accepts_loss_kwargs"):
            return self.get_base_model().accepts_loss_kwargs
        parameters = inspect.signature(self.get_base_model().forward).parameters.values()
        return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)

    def get_base_model(self) -> nn.Module:
        """The adapted model (peft's name)."""
        return self.base_model.model if isinstance(self.base_model, TunerModel) else self.base_model

    # ---- adapters -------------------------------------------------------------------------------
    def adapter_layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        """(path, layer) for every adapter layer, outer before nested (``q.base_layer`` under ``q``)."""
        for name, module in self.get_base_model().named_modules():
            if isinstance(module, AdapterLayer):
                yield name, module

    def add_adapter(self, adapter_name: str, peft_config: PeftConfig, low_cpu_mem_usage: bool = False,
                    autocast_adapter_dtype: bool | None = None) -> None:
        """Add a new adapter (not made active unless it is the first); arguments as ``get_peft_model``'s."""
        del low_cpu_mem_usage
        self._check_new_name(adapter_name)
        with reshaped(self.get_base_model(), peft_config):
            self._inject(adapter_name, plan(self.get_base_model(), peft_config))
        if autocast_adapter_dtype:
            self._upcast_adapter(adapter_name)

    def _upcast_adapter(self, adapter_name: str) -> None:
        """peft's ``autocast_adapter_dtype``: float16 / bfloat16 adapter weights kept in float32."""
        for tensor in self._trainable_tensors(adapter_name):
            if tensor.dtype in (torch.float16, torch.bfloat16):
                tensor.data = tensor.data.float()

    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str,
                             combination_type: str = "svd", svd_rank: int | None = None, density: float | None = None,
                             majority_sign_method: str = "total") -> None:
        """Adapter arithmetic, as peft's: a new adapter from weighted existing ones, by the method's own rule (LoRA:
        linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune and their _svd forms; negative weights
        negate; see ``peftkit/methods/lora/arithmetic.py``)."""
        existing = [name for name in adapters if name in self.peft_config]
        if adapters and not existing:
            raise ConfigError(f"adapter '{adapters[0]}' does not exist; adapters: {', '.join(self.peft_config)}")
        method = method_for_config(self.peft_config[existing[0]]) if existing else None
        if method is None or method.combine_adapters is None:
            name = method.name if method else "none given"
            raise ConfigError(f"add_weighted_adapter: method '{name}' has no adapter arithmetic (LoRA has)")
        method.combine_adapters(self, adapters, weights, adapter_name, combination_type, svd_rank, density,
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
            config.target_modules = [item.name for item in the_plan.modules
                                     if item.role == "adapt" and item.config is None]
        if config.is_prompt_learning and config.task_type is None:  # peft runs a prompt only for a known task
            config.task_type = task_type_of(self.get_base_model())
        heads = TASK_HEAD_NAMES.get(config.task_type or "", [])
        if heads:  # recorded as peft records them, so the saved config reads the same in both
            config.modules_to_save = list(dict.fromkeys((config.modules_to_save or []) + heads))
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(self.get_base_model(), "name_or_path", None) or None
        self._hold_for(config)
        try:
            shared_cls = method_for_config(config).shared
            if shared_cls is not None:
                self.shared_tensors[adapter_name] = shared_cls(config, adapted_bases(self.get_base_model(), the_plan))
            for item in the_plan.modules:
                if item.role == "prompt":
                    self.prompt_encoder[adapter_name] = item.layer_cls(config, self.get_base_model())
                    continue
                module = self._layer_of_class(item.name, item.layer_cls)
                if module is None:  # wrap the module, or the adapter layers of other methods already on it
                    module = item.layer_cls(self.get_base_model().get_submodule(item.name))
                    module.active_adapters = self.active_names()
                    module.composition = self.active_composition
                    self._replace(item.name, module)
                if adapter_name in self.shared_tensors:
                    module.shared[adapter_name] = self.shared_tensors[adapter_name]
                own = item.config if item.config is not None else config  # a companion's (PeftConfig.companions)
                module.add_adapter(adapter_name, own, item.name)
                module.attach(self.get_base_model(), item.name, own)
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
        module = self.get_base_model().get_submodule(name)
        while isinstance(module, AdapterLayer) and not isinstance(module, layer_cls):
            module = module.base_layer
        return module if isinstance(module, layer_cls) else None

    def _replace(self, name: str, module: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.get_base_model().get_submodule(parent_name) if parent_name else self.get_base_model()
        setattr(parent, child, module)

    def _remove_from_layers(self, adapter_name: str) -> None:
        if adapter_name in self.prompt_encoder:
            del self.prompt_encoder[adapter_name]
        if adapter_name in self.shared_tensors:
            del self.shared_tensors[adapter_name]
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

    def set_adapter(self, adapter: str | Composition, train: list[str] | None = None,
                    inference_mode: bool = False) -> None:
        """Use one adapter, or a composition of several (``Stack``, ``Parallel``, ``Average``, ``BatchSplit``,
        ``Fuse``, ``Scale`` from ``peftkit``), in forward passes.

        One adapter trains; in a composition the adapters named in ``train`` do (default: all of them,
        except under ``Fuse`` / ``Scale``, where their layers train and the adapters stay frozen).
        ``inference_mode=True`` (peft's argument): nothing trains.
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
        self.inference_only = inference_mode
        self._mark_trainable()

    def _check_composition(self, composition: Composition) -> None:
        prompts = [n for n in composition.names if n in self.prompt_encoder]
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
        for parameter in self.get_base_model().parameters():
            parameter.requires_grad_(False)
        for parameter in [*self.prompt_encoder.parameters(), *self.shared_tensors.parameters()]:
            parameter.requires_grad_(False)
        composition = self.active_composition
        if composition is None:
            trained = self.active_names()
        elif self.trained_in_composition is not None:
            trained = self.trained_in_composition
        else:
            trained = [] if isinstance(composition, LearnedComposition) else list(composition.names)
        for name in [] if self.inference_only else trained:
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

    def _check_merge_names(self, adapter_names: list[str] | None) -> None:
        if adapter_names is not None:
            for name in adapter_names:
                self._require(name)
                if name in self.prompt_encoder:
                    raise ConfigError(f"adapter '{name}' adds virtual tokens to the input; there is no weight to merge "
                                      f"it into")
            return
        if self._active_prompt() is not None:
            raise ConfigError(f"{type(self._active_prompt()).__name__} adds virtual tokens to the input; there is no "
                              f"weight to merge it into")
        if self.active_composition is not None and not isinstance(self.active_composition, Stack):
            raise ConfigError(f"{self.active_composition!r} gives each input its own mix of adapters; only a single "
                              f"adapter or a Stack can be merged into the weights")

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Fold the active adapter (or the named ones, in order) into the base weights; ``unmerge_adapter`` takes
        them out again. ``safe_merge`` checks the merged weights are finite before changing any."""
        self._check_merge_names(adapter_names)
        layers = [layer for _, layer in self.adapter_layers()]
        owners: dict[int, list[str]] = {}
        for name, parameter in self.get_base_model().named_parameters(remove_duplicate=False):
            owners.setdefault(id(parameter), []).append(name)
        for path, layer in self.adapter_layers():
            if not (layer.adapters_to_apply() if adapter_names is None else layer.own(adapter_names)):
                continue
            layer.check_mergeable()
            sharing = owners.get(id(getattr(layer.base_layer, "weight", None)), [])
            if len(sharing) > 1 and not layer.merges_tied_weight:
                raise ConfigError(
                    f"cannot merge into '{path}': its weight is shared with {', '.join(sharing[1:])}, which would "
                    f"change too; exclude it from target_modules or untie the weights first"
                )
        try:
            for layer in reversed(layers):  # nested layers first: an outer one acts on their output
                layer.merge(layer.active_adapters if adapter_names is None else adapter_names, safe_merge=safe_merge)
        except BaseException:
            self.unmerge_adapter()
            raise

    def unmerge_adapter(self) -> None:
        for _, layer in self.adapter_layers():
            layer.unmerge()

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """Merge the active adapter (or the named ones) and return the plain base model with the adapter layers
        removed. ``progressbar`` is accepted for peft's callers; merging takes no noticeable time to show."""
        del progressbar
        if adapter_names is not None:  # the named adapters' module copies (modules_to_save) are the ones kept
            self.set_adapter(adapter_names[0] if len(adapter_names) == 1 else Stack(*adapter_names))
        self.merge_adapter(safe_merge=safe_merge)
        return self._unwrap_all()

    def unload(self) -> nn.Module:
        """Return the base model without any adapter (nothing merged)."""
        self.unmerge_adapter()
        for _, layer in self.adapter_layers():
            layer.adapters_disabled = True  # so modules_to_save hand back their original module
        return self._unwrap_all()

    def _unwrap_all(self) -> nn.Module:
        disable_lean_training(self.get_base_model())
        for name, layer in reversed(list(self.adapter_layers())):
            self._replace(name, layer.unwrapped())
        self.prompt_encoder.clear()
        self.shared_tensors.clear()
        self.peft_config.clear()
        self.active_adapter = None
        return self.get_base_model()
