"""Server sides of the methods; importing this package registers every module in it."""

import importlib
import pkgutil

if __name__ != "fedrouter_app.strategies":
    # A second copy under another name would register every method twice.
    raise ImportError(f"import this package as fedrouter_app.strategies, not {__name__}")

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
