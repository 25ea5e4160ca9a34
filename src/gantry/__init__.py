"""Gantry: the classic Python web deployment stack in one package."""

from gantry.compiled import guard as _guard

__version__ = "0.1.0"

_guard()
