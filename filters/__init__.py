"""Built-in filtering strategies, one file each. Importing this package imports every module in it, and
each registers its filter by name: a new filter is one new file. Helpers several filters share live in
``common/``, which is not searched."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.ispkg and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
