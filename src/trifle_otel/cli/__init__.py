"""The ``trifle-otel`` command."""

from .main import main

__all__ = ["main"]
