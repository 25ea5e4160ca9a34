"""Gantry: the classic Python web deployment stack in one package."""

__version__ = "0.1.0"
