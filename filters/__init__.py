"""Built-in filtering strategies, one file each. Importing this package imports every public module in
it (``_name.py`` modules are private helpers), and each registers its filter by name: a new filter is
one new file."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
