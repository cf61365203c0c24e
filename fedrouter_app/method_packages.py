"""A check that ``strategies`` and ``clients`` are this app's packages, not others of the same name.

The methods' server and client sides live in the top-level packages
``strategies`` and ``clients``, next to ``fedrouter_app`` (in the source tree,
in Flower's app bundle and in site-packages alike). Those are generic names:
another installed distribution may ship a package called the same, which
either shadows ours on ``sys.path`` or, installed into the same site-packages,
overwrites files of it. :func:`check_method_packages` runs when
``fedrouter_app`` is imported and turns both cases into a one-line error
instead of a confusing ``ImportError`` deep inside a run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Every package of ours sets this module attribute; a foreign package of the same name does not.
MARKER = "FEDROUTER_METHOD_PACKAGE"
METHOD_PACKAGES = ("strategies", "clients")


class MethodPackageError(ImportError):
    """``strategies`` or ``clients`` resolves to a package that is not this app's."""


def _expected_init(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / name / "__init__.py"


def _remedy(name: str) -> str:
    return (
        f"another installed package is called {name!r}: uninstall it "
        "(pip show -f to find which distribution owns it) or install fedrouter in its own virtual environment"
    )


def check_method_packages() -> None:
    """Check, without importing them, that ``strategies`` and ``clients`` are the ones next to this package.

    Raises
    ------
    MethodPackageError
        When one is missing or found elsewhere on ``sys.path``.
    """
    for name in METHOD_PACKAGES:
        expected = _expected_init(name)
        spec = importlib.util.find_spec(name)
        found = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if found != expected:
            where = f"resolves to {found}" if found else "is not an importable package"
            raise MethodPackageError(f"fedrouter's method package {name!r} {where}, not {expected}; {_remedy(name)}")


def check_marker(module: object) -> None:
    """Check that an imported method package is ours (its files may have been overwritten by another's).

    Raises
    ------
    MethodPackageError
        When ``module`` lacks :data:`MARKER`.
    """
    if getattr(module, MARKER, False) is not True:
        name = getattr(module, "__name__", "?")
        raise MethodPackageError(f"the package {name!r} imported is not fedrouter's (no {MARKER}); {_remedy(name)}")
