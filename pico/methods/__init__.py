"""Merge methods, one module each. Importing this package registers every module in it: adding a method is adding
a file with one ``@merge_method`` function (see ``pico.registry``)."""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    importlib.import_module(f"{__name__}.{_info.name}")
