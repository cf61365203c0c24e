"""Where the methods and the configuration live: next to ``fedrouter_app``, or inside it.

In the repository, and in Flower's app bundle (which packs the repository),
the methods' server and client sides and the Hydra configuration are the
top-level folders ``strategies/``, ``clients/`` and ``conf/``: that is where a
method is added. An installed wheel puts the same folders inside the package
(``fedrouter_app/strategies`` and so on), so that fedrouter claims no generic
names in site-packages. Code imports the methods under one name in both
layouts, ``fedrouter_app.strategies`` and ``fedrouter_app.clients``; in the
repository layout :class:`RepositoryLayoutFinder`, installed when
``fedrouter_app`` is imported, resolves those two names to the top-level
folders.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
METHOD_PACKAGES = ("strategies", "clients")
# Folders that are top-level in the repository and inside the package once installed.
LAYOUT_PARTS = (*METHOD_PACKAGES, "conf")


def installed_layout(package_dir: Path = PACKAGE_DIR) -> bool:
    """Whether the method packages are inside ``package_dir`` (an installed wheel), not next to it."""
    return (package_dir / "strategies" / "__init__.py").is_file()


def part_dir(name: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The folder of ``strategies``, ``clients`` or ``conf`` in the layout ``package_dir`` belongs to."""
    if name not in LAYOUT_PARTS:
        raise ValueError(f"unknown layout part {name!r}; valid choices: {', '.join(LAYOUT_PARTS)}")
    inside = package_dir / name
    return inside if inside.is_dir() else package_dir.parent / name


class RepositoryLayoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``fedrouter_app.strategies`` and ``fedrouter_app.clients`` in the repository's top-level folders.

    Only those two names: their submodules are then found on the packages'
    ``__path__`` as usual.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        parent, _, name = fullname.rpartition(".")
        if parent != __package__ or name not in METHOD_PACKAGES:
            return None
        folder = part_dir(name)
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def install_finder() -> None:
    """In the repository layout, let ``fedrouter_app.strategies`` and ``fedrouter_app.clients`` resolve (once)."""
    if installed_layout():
        return
    if not any(type(finder).__name__ == RepositoryLayoutFinder.__name__ for finder in sys.meta_path):
        sys.meta_path.append(RepositoryLayoutFinder())
