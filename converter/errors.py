"""Errors the CLI turns into one ``converter: error: ...`` line and a non-zero exit."""

from __future__ import annotations


class ConverterError(Exception):
    """A failure the user can act on; its message is printed as one line."""

    exit_code = 1


class WeightsUnavailable(ConverterError):
    """Pretrained weights cannot be had (typically: no internet); ``auto`` falls back on it."""

    exit_code = 3


class ParityError(ConverterError):
    """The converted model does not reproduce the source model closely enough."""

    exit_code = 4
