"""The version check every compatibility module runs at import."""

from __future__ import annotations

from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import Version


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` (e.g. ``"flwr"``), as its metadata says."""
    return metadata.version(distribution)


def tested_version_error(distribution: str, tested: str, found: str, relies_on: str, install: str) -> str | None:
    """The one-line message for ``found`` outside ``tested``; None when it is inside.

    Parameters
    ----------
    distribution : str
        The library's distribution name.
    tested : str
        The tested range as a PEP 440 specifier set, e.g. ``">=1.41,<1.42"``.
    found : str
        The installed version.
    relies_on : str
        What fedrouter does with the library's internals, completing
        "fedrouter ... and was tested with ...".
    install : str
        A requirement inside the range, for the message.
    """
    # Pre-releases of a tested minor version count as inside: they are what a fix would be tried on.
    if SpecifierSet(tested).contains(Version(found), prereleases=True):
        return None
    return (
        f"fedrouter {relies_on} and was tested with {distribution} {tested}; found {found}. "
        f"Install {install!r} (see 'Compatibility' in docs/architecture.md)."
    )


def require_tested_version(distribution: str, tested: str, relies_on: str, install: str) -> str:
    """The installed version of ``distribution``, checked against ``tested``.

    Raises
    ------
    RuntimeError
        When the installed version is outside ``tested`` (see :func:`tested_version_error`).
    """
    found = installed_version(distribution)
    error = tested_version_error(distribution, tested, found, relies_on, install)
    if error is not None:
        raise RuntimeError(error)
    return found
