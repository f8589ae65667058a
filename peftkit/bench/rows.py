"""What a bench runs: one row per method and option set, read from ``--methods`` and a YAML file.

A row is a method (any registered one, ``qlora``, a LoRA variant such as ``dora``, or ``full``) with its
options. The YAML file maps a method name to its options, or to a list of option sets, one row each::

    lora:                 # three rows: "lora r=4", "lora r=8", "lora r=16"
      - {r: 4}
      - {r: 8}
      - {r: 16}
    bottleneck: {reduction_factor: 32}
    dora: {r: 4}          # a variant: LoRA with use_dora

Full fine-tuning is always the first row, the reference the others are compared with. Every row is checked
before the first one runs (``runner.check_bench``): a name that is no method, or options a method refuses,
stop the bench with a one-line error naming the row. A method's earlier name (``adapter``) stands for its name
(``bottleneck``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from peftkit.core.errors import ConfigError
from peftkit.core.registry import canonical_name, method_variants, quantized_forms, registered_methods
from peftkit.core.yaml_files import read_yaml_mapping
from peftkit.recipes.training import FULL_FINE_TUNING


@dataclass(frozen=True)
class BenchRow:
    label: str  # unique within a bench, e.g. "lora r=4"
    method: str  # what ``peftkit train --method`` takes ("full", "qlora", a registered method)
    options: dict = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The row's file-name-safe label."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.label.replace(" ", "_"))


def default_methods() -> list[str]:
    """Every registered method, its quantised forms (QLoRA) and variants (DoRA), after full fine-tuning."""
    names = sorted({*registered_methods(), *quantized_forms(), *method_variants()})
    return [FULL_FINE_TUNING, *names]


def read_method_options(path: str | Path) -> dict[str, list[dict]]:
    """The YAML file's option sets per method name."""
    values = read_yaml_mapping(path, "method options",
                               "method names mapped to options (or to a list of option sets)")
    sets = {}
    for method, options in values.items():
        options = [{}] if options is None else options if isinstance(options, list) else [options]
        if not all(isinstance(option_set, dict) for option_set in options):
            raise ConfigError(f"{path}: the options of '{method}' must be a mapping or a list of mappings")
        sets[canonical_name(str(method))] = options
    return sets


def _label(method: str, options: dict, several: bool) -> str:
    if not several or not options:
        return method
    return f"{method} " + " ".join(f"{key}={value}" for key, value in options.items())


def bench_rows(methods: list[str] | None = None, options_file: str | Path | None = None) -> list[BenchRow]:
    """Full fine-tuning, then each method (default: every one) with each of its option sets."""
    option_sets = read_method_options(options_file) if options_file else {}
    names = list(dict.fromkeys(canonical_name(name) for name in methods or default_methods()))
    if FULL_FINE_TUNING in names:
        names.remove(FULL_FINE_TUNING)
    unused = [name for name in option_sets if name not in names]
    if unused:
        reason = "full fine-tuning takes no options" if unused[0] == FULL_FINE_TUNING else "not a benched method"
        raise ConfigError(f"{options_file}: options for '{unused[0]}', {reason} (methods: {', '.join(names)})")
    rows = [BenchRow(FULL_FINE_TUNING, FULL_FINE_TUNING)]
    for name in names:
        variants = method_variants()
        base, variant_options = (variants[name][0].name, variants[name][1]) if name in variants else (name, {})
        sets = option_sets.get(name, [{}])
        for options in sets:
            label = _label(name, options, several=len(sets) > 1)
            rows.append(BenchRow(label, base, {**variant_options, **options}))
    labels = [row.label for row in rows]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"bench rows named twice: {', '.join(repeated)} (give each option set other values)")
    return rows
