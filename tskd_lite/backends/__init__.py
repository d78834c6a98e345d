"""Model backends behind one protocol (base.py). Every module of this package is imported here, and each registers
its class in BACKENDS, so that a new backend is one new file."""

import importlib
import pkgutil

from tskd_lite.backends.base import BACKENDS, Backend, Generation, Scored, backend_class, open_backend

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BACKENDS", "Backend", "Generation", "Scored", "backend_class", "open_backend"]
