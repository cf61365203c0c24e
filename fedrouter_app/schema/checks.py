"""Value checks every settings section uses: one clear line naming the key, as a ConfigError."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, described in one line."""


def require(ok: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Require ``value`` to be one of ``choices``."""
    require(value in choices, f"{name} must be one of {', '.join(choices)}; got {value!r}")
