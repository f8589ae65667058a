"""What is trained: each module or package here holds one method's config and layers and registers it.

Importing this package imports every method module in it (found by listing the package, so a new method is one new
file); the modules holding what several methods share (``config_rules``, ``weight_delta``) register nothing."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
