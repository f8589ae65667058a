"""Write docs/methods.md, the table of methods, from the method registry (each method's registration carries its
description, default learning rate, variants and quantised forms). Run: python docs/generate_methods.py"""

from __future__ import annotations

from pathlib import Path

import peftkit
from peftkit.core.registry import registered_methods
from peftkit.recipes.training import FULL_FINE_TUNING, FULL_LEARNING_RATE

TARGET = Path(__file__).with_name("methods.md")


def methods_markdown() -> str:
    peftkit.load_builtins()
    lines = ["# Methods", "",
             "Generated from the method registry by `python docs/generate_methods.py`; `peftkit train --help` lists",
             "the same. `--method NAME` takes each name below; `peftkit bench` also runs the variants as rows.", "",
             "| `--method` | config | peft type | what it is | default lr | variants, quantised forms | "
             "peft reads it |",
             "|---|---|---|---|---:|---|---|"]
    for name, method in sorted(registered_methods().items()):
        forms = [f"`{variant}` ({', '.join(f'{k}={v}' for k, v in options.items())})"
                 for variant, options in method.variants.items()]
        forms += [f"`{form_name}` ({form.description}, lr {form.learning_rate:g})"
                  for form_name, form in method.quantized.items()]
        lines.append(f"| `{name}` | `{method.config_cls.__name__}` | {method.config_cls.peft_type} | "
                     f"{method.description} | {method.learning_rate:g} | {'; '.join(forms) or '—'} | "
                     f"{'yes' if method.peft_reads else 'no'} |")
    lines += [f"| `{FULL_FINE_TUNING}` | — | — | every weight of the model trains (the reference) | "
              f"{FULL_LEARNING_RATE:g} | — | — |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    TARGET.write_text(methods_markdown())
    print(f"wrote {TARGET}")
