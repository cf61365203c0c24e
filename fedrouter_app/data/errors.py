"""The one error type for bad data: it names the file (or dataset) and the problem."""

from __future__ import annotations

from fedrouter_app.schema.checks import ConfigError


class DataError(ConfigError):
    """Bad or missing data, described in one line that names where it comes from.

    A subclass of :class:`~fedrouter_app.schema.settings.ConfigError`, so a run stops
    at start with the same one-line report as any configuration mistake.
    """


class TooFewSamplesError(DataError):
    """A client or task holds fewer distinct samples than a method must cluster."""
