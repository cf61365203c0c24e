"""Client sides of the methods; importing this package registers every module in it."""

import importlib
import pkgutil

# Tells fedrouter_app.method_packages this is fedrouter's package, not another of the same name.
FEDROUTER_METHOD_PACKAGE = True

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
